"""The one trainer for every self-supervised method: single process (CPU or GPU) or torchrun DDP.

Per optimiser step: `accum_steps` micro-batches (forward under bf16 autocast on GPU, backward of loss / accum),
set the warmup+cosine lr, optimiser step, `method.after_step` (EMA etc.) on the unwrapped module. Checkpoints go to
`<out_dir>/checkpoints/` every N epochs and on SIGTERM/SIGINT (then the process exits non-zero so a scheduler can
requeue it); a rerun resumes from the newest valid checkpoint. The declared output `model.pt` is written once, at
the end. Data randomness is keyed by (seed, epoch, image), so a resumed run continues where it stopped: bit for bit
on CPU (deterministic kernels); on GPUs only statistically, since cuDNN autotuning and atomic-add kernels
(backward of convolutions, index_add, scatter) are not deterministic.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import json
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm import tqdm

from orl import __version__
from orl import checkpoint as ckpt
from orl.data.datasets import SeededSampler
from orl.data.device_augment import collate_samples, finish_views
from orl.data.loader_workers import ignore_stop_signals, stop_workers
from orl.methods import Method, build_method
from orl.precision import autocast_dtype
from orl.runtime import Runtime, seed_everything
from orl.train.knn_monitor import COLUMN as KNN_COLUMN
from orl.train.knn_monitor import KnnMonitor
from orl.train.lars import LARS
from orl.train.schedules import global_batch_size, scaled_lr, warmup_cosine_lr, warmup_steps_for

PRECISIONS = ("bf16", "fp16", "fp32")


@dataclass
class TrainConfig:
    """Everything that defines a training run (the dataset is passed separately)."""

    method: str = "byol"
    method_args: dict[str, Any] = field(default_factory=dict)  # constructor kwargs, incl. arch
    epochs: int = 1
    batch_size: int = 64  # per process, per micro-batch
    accum_steps: int = 1
    lr: float | None = None  # base lr at base_batch images; None: the method's default
    base_batch: int | None = None  # None: the method's default
    weight_decay: float | None = None  # None: the method's default
    warmup_epochs: float | None = None  # None: the method's recipe (BYOL/ORL 4, MoCo v2 0, SimCLR 10)
    workers: int = 4
    checkpoint_every: int = 1  # epochs; a checkpoint is also written at the end and on SIGTERM/SIGINT
    keep_checkpoints: int = 2
    log_every: int = 10  # optimiser steps per metrics row
    seed: int = 0
    precision: str = "bf16"  # GPU only (fp16 where the GPU lacks bf16); CPU always trains in fp32
    channels_last: bool = True  # GPU only
    sync_bn: bool | None = None  # GPU + distributed only; None: the method's recipe (MoCo v2: per-GPU BN)
    image_size: int = 224  # recorded in meta / resume fingerprint; the dataset applies it
    pipeline: str = "cpu"  # input pipeline the dataset was built with (cpu / device): recorded, part of the fingerprint
    decode: str = "worker"  # device pipeline: where JPEGs were decoded (worker / device); recorded, fingerprinted

    def as_dict(self) -> dict[str, Any]:
        """Plain-container copy (safe for weights_only checkpoints and JSON)."""
        return json.loads(json.dumps(asdict(self)))


@dataclass
class TrainResult:
    """How fit() ended: finished (model.pt written) or interrupted by a signal (checkpoint written)."""

    finished: bool
    step: int
    total_steps: int
    signal: int | None = None
    model_path: Path | None = None
    checkpoint: Path | None = None

    @property
    def exit_code(self) -> int:
        """0 when finished, 128 + signal number when interrupted (143 for SIGTERM, 130 for SIGINT)."""
        return 0 if self.finished else 128 + (self.signal or signal.SIGTERM)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the message names the iteration and every loss term."""


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def build_optimizer(method: Method, cfg: TrainConfig, global_batch: int) -> tuple[torch.optim.Optimizer, float, dict]:
    """SGD or LARS per the method's default_optim (config may override lr, base batch, weight decay); peak lr."""
    optim = dict(method.default_optim)
    base_lr = optim["base_lr"] if cfg.lr is None else cfg.lr
    base_batch = optim["base_batch"] if cfg.base_batch is None else cfg.base_batch
    wd = optim["weight_decay"] if cfg.weight_decay is None else cfg.weight_decay
    momentum = optim.get("momentum", 0.9)
    peak = scaled_lr(base_lr, base_batch, global_batch)
    params = [p for p in method.parameters() if p.requires_grad]
    if optim["name"] == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=peak, momentum=momentum, weight_decay=wd)
    elif optim["name"] == "lars":
        extra = {k: optim[k] for k in ("trust_coefficient", "exclude_bias_and_bn") if k in optim}
        opt = LARS(params, lr=peak, momentum=momentum, weight_decay=wd, **extra)
    else:
        raise ValueError(f"{method.name}: unknown optimiser {optim['name']!r} in default_optim")
    resolved = {"name": optim["name"], "base_lr": base_lr, "base_batch": base_batch, "weight_decay": wd,
                "momentum": momentum, "peak_lr": peak, "global_batch": global_batch}
    return opt, peak, resolved


def _to_device(batch: Mapping[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            fmt = torch.channels_last if channels_last and v.ndim == 4 else torch.preserve_format
            out[k] = v.to(device, non_blocking=True, memory_format=fmt)
        else:
            out[k] = v
    return out


class MetricsLog:
    """metrics.csv (rank 0) plus TensorBoard scalars when tensorboard is installed."""

    def __init__(self, out_dir: Path, resume_step: int) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / "metrics.csv"
        self.columns: list[str] | None = None
        if resume_step > 0 and self.path.exists():
            # Drop rows logged after the checkpoint we resume from: they will be recomputed.
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
            if rows:
                self.columns = list(rows[0].keys())
                self._rewrite(rows)
            else:
                self.path.unlink()
        elif self.path.exists():
            self.path.unlink()
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step or None)
        except ImportError:  # tensorboard is optional
            pass

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns)
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict[str, float]) -> None:
        """Append one row (the header is written with the first row; a row with new columns widens the file)."""
        new = self.columns is None or not self.path.exists()
        # Snakemake removes the empty output folder when it is stopped early; recreate it rather than fail.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.columns is None:
            self.columns = list(row.keys())
        elif any(k not in self.columns for k in row):
            # e.g. the kNN monitor's step-0 row comes before the first loss row: rewrite with the wider header.
            with open(self.path, newline="") as f:
                rows = list(csv.DictReader(f)) if not new else []
            self.columns += [k for k in row if k not in self.columns]
            self._rewrite(rows)
            new = False
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch") and v is not None:
                    self.tb.add_scalar(f"train/{k}", v, int(row["step"]))

    def close(self) -> None:
        """Flush TensorBoard."""
        if self.tb is not None:
            self.tb.close()


class Trainer:
    """Train `cfg.method` on `dataset` and write `out` (model.pt); checkpoints in out.parent / 'checkpoints'."""

    def __init__(
        self,
        cfg: TrainConfig,
        dataset: torch.utils.data.Dataset,
        out: str | Path,
        runtime: Runtime | None = None,
        on_step: Callable[[Trainer, int], None] | None = None,
        meta: Mapping[str, Any] | None = None,
        knn_monitor: KnnMonitor | None = None,
    ) -> None:
        if cfg.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {cfg.precision!r}")
        if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.accum_steps < 1:
            raise ValueError("epochs, batch_size and accum_steps must be >= 1")
        self.cfg, self.dataset, self.out = cfg, dataset, Path(out)
        self.out_dir = self.out.parent
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.rt = runtime or Runtime(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
        self.on_step = on_step
        self.meta = dict(meta or {})
        self.knn_monitor = knn_monitor  # evaluated by every rank it is given to (the stage gives it to rank 0)
        self._stop_signal: int | None = None
        self._stop_requested = False

    # ----------------------------------------------------------------------------------------------- stopping
    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Finish the current step, checkpoint and return (called by the signal handler, or by tests)."""
        self._stop_signal = signum
        self._stop_requested = True

    def _handle_signal(self, signum: int, _frame: Any) -> None:
        if self._stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C aborts at once
        if self.rt.is_main:
            print(f"\nreceived signal {signum}: finishing the current step, then saving a checkpoint", file=sys.stderr)
        self.request_stop(signum)

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be installed from the main thread
            return
        previous = {s: signal.signal(s, self._handle_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _should_stop(self) -> int | None:
        """The stop signal if ANY rank got one (all ranks must leave the loop at the same step)."""
        if not self.rt.distributed:
            return self._stop_signal
        flag = torch.tensor([self._stop_signal or 0], dtype=torch.int64)
        tdist.all_reduce(flag, op=tdist.ReduceOp.MAX, group=self._cpu_group)  # CPU/gloo: no GPU sync per step
        return int(flag.item()) or None

    # -------------------------------------------------------------------------------------------------- setup
    def _build_method(self) -> Method:
        seed_everything(self.cfg.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
        method = build_method(self.cfg.method, **self.cfg.method_args)
        seed_everything(self.cfg.seed + self.rt.rank)  # per-rank streams for anything random during training
        return method

    def _fingerprint(self, resolved_optim: Mapping[str, Any], steps_per_epoch: int) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed (per-process batch / world size may change)."""
        c = self.cfg
        return json.loads(json.dumps({
            "method": c.method, "hparams": self._method.hparams(), "epochs": c.epochs, "optim": dict(resolved_optim),
            "warmup_epochs": c.warmup_epochs, "seed": c.seed, "image_size": c.image_size,
            # Only when not the reference: checkpoints written before the key existed still resume.
            **({"pipeline": c.pipeline} if c.pipeline != "cpu" else {}),
            **({"decode": c.decode} if c.pipeline == "device" and c.decode != "worker" else {}),
            "steps_per_epoch": steps_per_epoch, "dataset_size": len(self.dataset),
            "image_list_digest": self.meta.get("image_list_digest"),
            # ORL's inputs: a new correspondence artifact or RoI size must not resume an old run.
            "roi_size": self.meta.get("roi_size"),
            "correspondence_params_digest": self.meta.get("correspondence_params_digest"),
        }, default=str))

    def _find_resume(self, fingerprint: Mapping[str, Any]) -> dict[str, Any] | None:
        """Load the newest valid checkpoint made by the same configuration; set aside stale ones."""
        if self.rt.is_main:
            ckpt.remove_stale_temps(self.ckpt_dir)  # half-written checkpoints of a killed run
        path = ckpt.latest_checkpoint(self.ckpt_dir)
        state = ckpt.load_checkpoint(path) if path is not None else None
        stale = state is not None and state["config"].get("fingerprint") != fingerprint
        if self.rt.distributed:
            tdist.barrier(group=self._cpu_group)  # everyone has read before rank 0 moves anything
        if stale:
            if self.rt.is_main:
                aside = self.ckpt_dir / f"stale-{_dt.datetime.now():%Y%m%d-%H%M%S}"
                aside.mkdir(parents=True, exist_ok=True)
                for p in ckpt.list_checkpoints(self.ckpt_dir):
                    p.rename(aside / p.name)
                warnings.warn(
                    f"checkpoints in {self.ckpt_dir} were made with a different configuration; moved them to {aside} "
                    "and starting from scratch",
                    stacklevel=2,
                )
            state = None
        if self.rt.distributed:
            tdist.barrier(group=self._cpu_group)
        return state

    # --------------------------------------------------------------------------------------------------- fit
    def fit(self) -> TrainResult:
        """Train to the end (or to a stop signal); returns how it ended."""
        with self._signals():
            return self._fit()

    def _fit(self) -> TrainResult:
        cfg, rt = self.cfg, self.rt
        dev = rt.device
        on_gpu = dev.type == "cuda"
        self._cpu_group = None
        if rt.distributed:
            # Stop flags and barriers on a gloo group: with NCCL they would otherwise need a GPU sync per step.
            # Across nodes gloo uses the interface of the hostname's address; where that is not the training
            # network, set GLOO_SOCKET_IFNAME as NCCL_SOCKET_IFNAME (srun passes the environment on; docs/gpu.md).
            self._cpu_group = tdist.new_group(backend="gloo") if tdist.get_backend() != "gloo" else None

        method = self._method = self._build_method()
        if cfg.warmup_epochs is None or cfg.sync_bn is None:  # explicit settings win over the method's recipe
            cfg = self.cfg = replace(cfg, warmup_epochs=_or(cfg.warmup_epochs, method.recipe.warmup_epochs),
                                     sync_bn=_or(cfg.sync_bn, method.recipe.sync_bn))
        sampler = SeededSampler(
            len(self.dataset), cfg.batch_size, rt.world_size, rt.rank, cfg.accum_steps, shuffle=True, seed=cfg.seed
        )
        steps_per_epoch = sampler.steps_per_epoch
        total_steps = cfg.epochs * steps_per_epoch
        warmup = warmup_steps_for(cfg.warmup_epochs, steps_per_epoch)
        gbatch = global_batch_size(cfg.batch_size, rt.world_size, cfg.accum_steps)

        method.to(dev)
        if on_gpu and rt.distributed and cfg.sync_bn:
            method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
        channels_last = on_gpu and cfg.channels_last
        if channels_last:
            method = method.to(memory_format=torch.channels_last)
        self._method = method
        optimizer, peak_lr, resolved = build_optimizer(method, cfg, gbatch)
        # bf16 falls back to fp16 (announced) on GPUs without native bf16; fp16 needs the GradScaler.
        amp_dtype = autocast_dtype(cfg.precision, dev)
        scaler = torch.amp.GradScaler(dev.type) if amp_dtype is torch.float16 else None

        fingerprint = self._fingerprint(resolved, steps_per_epoch)
        state = self._find_resume(fingerprint)
        start_step = 0
        if state is not None:
            method.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            rng = state["rng"]
            # One RNG state per rank; after a change of world size each rank keeps its fresh seed + rank stream.
            if isinstance(rng, list) and len(rng) == rt.world_size:
                ckpt.set_rng_state(rng[rt.rank])
            start_step = int(state["step"])
            if rt.is_main:
                print(f"resuming from step {start_step}/{total_steps} (epoch {start_step // steps_per_epoch})",
                      file=sys.stderr)
        del state

        model: nn.Module = method
        if rt.distributed:
            # No buffer broadcast before every forward (MoCo's queue alone is 32 MB): the queue and its pointer are
            # written identically on every rank from all-gathered keys, SyncBN statistics are global, and per-GPU
            # BN statistics are only read from rank 0, which writes the checkpoints (a resume loads them everywhere).
            model = DDP(method, device_ids=[dev.index] if on_gpu else None, broadcast_buffers=False)

        loader = DataLoader(
            self.dataset,
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=cfg.workers,
            collate_fn=collate_samples,  # default_collate, but the device pipeline's images keep their own sizes
            pin_memory=on_gpu,
            drop_last=False,  # the sampler already yields whole global batches only
            persistent_workers=cfg.workers > 0,
            # Workers ignore the group-wide SIGTERM/SIGINT (the main process finishes the step and saves); on any
            # error the except below stops them, else the exit would wait for them forever (orl.data.loader_workers).
            worker_init_fn=ignore_stop_signals if cfg.workers > 0 else None,
        )
        log = MetricsLog(self.out_dir, start_step) if rt.is_main else None
        bar = tqdm(total=total_steps, initial=start_step, disable=not rt.is_main, dynamic_ncols=True,
                   mininterval=1.0 if sys.stderr.isatty() else 30.0, desc=f"{cfg.method}")
        run_info = {"steps_per_epoch": steps_per_epoch, "total_steps": total_steps, "warmup_steps": warmup,
                    "world_size": rt.world_size, "optim": resolved}
        self._window: list[tuple[int, float, dict[str, torch.Tensor]]] = []
        self._window_start = time.perf_counter()
        self._last_losses: dict[str, float] = {}
        self._monitor_row: dict[str, float] = {}
        self._last_knn: float | None = None
        if start_step == 0:
            self._run_monitor(method)  # the step-0 reference, before any update
            if self._monitor_row and log is not None:
                log.write({"step": 0, "epoch": 0.0, **self._monitor_row})
                self._monitor_row = {}

        step = start_step
        stop: int | None = None
        try:
            while step < total_steps and stop is None:
                epoch = step // steps_per_epoch
                sampler.set_epoch(epoch, skip=(step % steps_per_epoch) * cfg.accum_steps * cfg.batch_size)
                model.train()
                batches = iter(loader)
                while step < total_steps and step // steps_per_epoch == epoch:
                    lr = warmup_cosine_lr(step, total_steps, peak_lr, warmup)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    terms = self._train_step(model, method, optimizer, scaler, batches, amp_dtype, channels_last)
                    method.after_step(step, total_steps)
                    step += 1
                    self._window.append((step, lr, terms))
                    if self.on_step is not None:
                        self.on_step(self, step)
                    end_of_epoch = step % steps_per_epoch == 0
                    if end_of_epoch and self.knn_monitor is not None and self.knn_monitor.due(
                        step // steps_per_epoch, step == total_steps
                    ):
                        self._run_monitor(method)  # logged with this step's loss row, flushed just below
                    stop = self._should_stop()
                    if len(self._window) >= cfg.log_every or end_of_epoch or stop is not None or step == total_steps:
                        self._flush_window(log, bar, steps_per_epoch, gbatch)
                    if stop is not None:
                        break
                del batches
                epoch_done = step // steps_per_epoch
                if stop is None and step % steps_per_epoch == 0 and (
                    epoch_done % cfg.checkpoint_every == 0 or step == total_steps
                ):
                    self._save_checkpoint(method, optimizer, scaler, epoch_done, step, fingerprint, run_info)
                    self._window_start = time.perf_counter()  # images/s measures training, not checkpointing
                    if rt.is_main:
                        terms = ", ".join(f"{k} {v:.4f}" for k, v in self._last_losses.items())
                        print(f"epoch {epoch_done}/{cfg.epochs} step {step}/{total_steps} {terms}", file=sys.stderr)
            if stop is not None:
                path = self._save_checkpoint(
                    method, optimizer, scaler, step // steps_per_epoch, step, fingerprint, run_info
                )
                return TrainResult(False, step, total_steps, signal=stop, checkpoint=path)
            if rt.is_main:
                meta = {**self.meta, **run_info, "config": cfg.as_dict(), "orl_version": __version__,
                        "final_losses": self._last_losses,
                        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
                ckpt.save_final(self.out, method, meta)
            if rt.distributed:
                tdist.barrier(group=self._cpu_group)
            return TrainResult(True, step, total_steps, model_path=self.out,
                               checkpoint=ckpt.latest_checkpoint(self.ckpt_dir))
        except BaseException:
            stop_workers(loader)  # a worker error, NaN loss or second Ctrl-C: the workers must not outlive us
            raise
        finally:
            bar.close()
            if log is not None:
                log.close()

    def _train_step(
        self,
        model: nn.Module,
        method: Method,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
        batches: Iterator[dict[str, Any]],
        amp_dtype: torch.dtype | None,
        channels_last: bool,
    ) -> dict[str, torch.Tensor]:
        """One optimiser step over accum_steps micro-batches; returns the loss terms averaged over them."""
        accum = self.cfg.accum_steps
        dev = self.rt.device
        optimizer.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        for micro in range(accum):
            # Device pipeline: the photometric ops run here, batched; a cpu-pipeline batch passes through.
            batch = _to_device(finish_views(next(batches), dev), dev, channels_last)
            # Only the last micro-batch all-reduces gradients; the others accumulate locally.
            sync = contextlib.nullcontext() if micro == accum - 1 or not isinstance(model, DDP) else model.no_sync()
            with sync:
                autocast = torch.autocast(dev.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
                with autocast:
                    out = model(batch)
                loss = out["loss"] / accum
                if scaler is not None:
                    scaler.scale(loss).backward()
                else:
                    loss.backward()
            for k, v in out.items():
                v = v.detach().float()
                sums[k] = sums[k] + v if k in sums else v
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        return {k: v / accum for k, v in sums.items()}

    def _flush_window(self, log: MetricsLog | None, bar: tqdm, steps_per_epoch: int, gbatch: int) -> None:
        """Average the window's loss terms over ranks, check they are finite, log one row."""
        window, self._window = self._window, []
        if not window:
            return
        names = list(window[0][2].keys())
        # One (steps x terms) matrix and one all-reduce for the whole window: no host sync inside the window.
        values = torch.stack([torch.stack([terms[k] for k in names]) for _, _, terms in window])
        if self.rt.distributed:
            tdist.all_reduce(values)
            values /= self.rt.world_size
        values = values.cpu()
        elapsed = time.perf_counter() - self._window_start
        self._window_start = time.perf_counter()
        bad = (~torch.isfinite(values)).any(dim=1).nonzero()
        if len(bad):
            row = int(bad[0])
            step = window[row][0] - 1  # iterations are counted from 0, like after_step
            terms = ", ".join(f"{k}={values[row, j].item():.6g}" for j, k in enumerate(names))
            raise NonFiniteLossError(
                f"non-finite loss at iteration {step} (epoch {step // steps_per_epoch}, lr {window[row][1]:.6g}): "
                f"{terms}; lower the learning rate or check the input data"
            )
        mean = values.mean(dim=0)
        self._last_losses = {k: float(mean[j]) for j, k in enumerate(names)}
        step, lr = window[-1][0], window[-1][1]
        images_per_s = len(window) * gbatch / max(elapsed, 1e-9)
        bar.update(len(window))
        knn = {} if self._last_knn is None else {"knn": f"{self._last_knn:.1f}"}
        bar.set_postfix(loss=f"{self._last_losses['loss']:.4f}", img_s=f"{images_per_s:.1f}", lr=f"{lr:.3g}",
                        **knn, refresh=False)
        if log is not None:
            log.write({"step": step, "epoch": round(step / steps_per_epoch, 4), "lr": lr, **self._last_losses,
                       "images_per_s": images_per_s, **self._monitor_row})
        self._monitor_row = {}

    def _run_monitor(self, method: Method) -> None:
        """kNN top-1 of the online backbone, kept for the next metrics row (no RNG, no collective, eval mode)."""
        if self.knn_monitor is None:
            return
        t0 = time.perf_counter()
        self._last_knn = self.knn_monitor.evaluate(method.online_backbone())
        self._monitor_row = {KNN_COLUMN: self._last_knn}
        self._window_start += time.perf_counter() - t0  # images/s measures training, not the monitor

    def _save_checkpoint(
        self,
        method: Method,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
        epoch: int,
        step: int,
        fingerprint: Mapping[str, Any],
        run_info: Mapping[str, Any],
    ) -> Path:
        """Rank 0 writes checkpoint `step` atomically and prunes old ones; all ranks wait for it."""
        path = ckpt.checkpoint_path(self.ckpt_dir, step)
        rng = [ckpt.rng_state()]
        if self.rt.distributed:
            rng = [None] * self.rt.world_size
            tdist.all_gather_object(rng, ckpt.rng_state(), group=self._cpu_group)
        if self.rt.is_main:
            state = {
                "method": method.name,
                "hparams": method.hparams(),
                "model": method.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "epoch": epoch,
                "step": step,
                "rng": rng,
                "config": {"train": self.cfg.as_dict(), "fingerprint": dict(fingerprint),
                           "run": json.loads(json.dumps(dict(run_info), default=str)),
                           "meta": json.loads(json.dumps(self.meta, default=str)), "orl_version": __version__},
            }
            ckpt.save_checkpoint(path, state)
            ckpt.prune_checkpoints(self.ckpt_dir, self.cfg.keep_checkpoints)
        if self.rt.distributed:
            tdist.barrier(group=self._cpu_group)
        return path


def train(
    cfg: TrainConfig,
    dataset: torch.utils.data.Dataset,
    out: str | Path,
    runtime: Runtime | None = None,
    meta: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Build a Trainer and run it (convenience for stages and tests)."""
    return Trainer(cfg, dataset, out, runtime=runtime, meta=meta).fit()

