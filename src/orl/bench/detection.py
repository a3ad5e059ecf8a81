"""Detection / instance segmentation benchmark (ORL_SPEC 5): fine-tune Mask R-CNN ResNet-FPN, report COCO AP.

The paper's Detectron2 1x schedule: global batch 16 (2 per GPU x 8), 90k iterations, SGD momentum 0.9, weight
decay 1e-4 (none on norm parameters), lr 0.02 with a 1,000-iteration linear warmup from 0.001 x lr, x0.1 at 60k and
80k; train short side drawn from 640..800 (step 32, long side <= 1333), horizontal flip; test short side 800.

Runs as one process (CPU or GPU) or under torchrun: --batch-size is GLOBAL and split over the processes, BN becomes
SyncBN on GPUs, and evaluation is sharded over ranks with the COCO results gathered to rank 0, which alone scores
them and writes files. Checkpoints (every `checkpoint_every` iterations, and on SIGTERM / SIGINT) go to a folder
beside the output; rerunning the same command resumes from the newest one made with the same settings.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
from pycocotools.coco import COCO
from torch import nn
from torch.utils.data import DataLoader, Subset

from orl import checkpoint as ckpt
from orl.artifacts import write_json_atomic
from orl.bench import coco_data, coco_eval
from orl.bench.detection_model import HeadSizes, build_mask_rcnn, norm_parameters, to_sync_bn
from orl.bench.weights import infer_arch, read_backbone_state, sha256_file
from orl.data.loader_workers import ignore_stop_signals, stop_workers_on_error
from orl.runtime import Runtime, seed_everything

CHECKPOINT_NAME = "detection"


@dataclass(frozen=True)
class DetectionConfig:
    """Everything that defines one detection fine-tuning run (defaults: the paper's COCO 1x schedule)."""

    iterations: int = 90_000
    batch_size: int = 16  # global: all processes together
    lr: float = 0.02
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    milestones: tuple[int, ...] = (60_000, 80_000)
    gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0
    train_min_sizes: tuple[int, ...] = (640, 672, 704, 736, 768, 800)
    train_max_size: int = 1333
    test_min_size: int = 800
    test_max_size: int = 1333
    heads: HeadSizes = field(default_factory=HeadSizes)
    freeze_at: int = 0  # the paper fine-tunes everything; k > 0 freezes ResNet stages 1..k (a cheaper probe)
    seed: int = 0
    precision: str = "fp32"  # "bf16": backbone and heads autocast on GPU, box arithmetic fp32 (CPU: fp32)
    sync_bn: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # recorded, not used (e.g. the method name)

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.batch_size < 1:
            raise ValueError("iterations and batch_size must be >= 1")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing, got {self.milestones}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")


def train_sizes(low: int, high: int, step: int = 32) -> tuple[int, ...]:
    """Short-side choices low, low + step, ..., high (Detectron2's 640..800 in steps of 32); step 0 -> (low, high)."""
    if low > high:
        raise ValueError(f"train size range is empty: {low} > {high}")
    if step <= 0 or low == high:
        return tuple(sorted({low, high}))
    sizes = list(range(low, high + 1, step))
    return tuple(sizes if sizes[-1] == high else [*sizes, high])


def detection_lr(step: int, cfg: DetectionConfig) -> float:
    """lr of iteration `step` (from 0): Detectron2's WarmupMultiStepLR with linear warmup."""
    factor = cfg.gamma ** bisect.bisect_right(cfg.milestones, step)
    if step < cfg.warmup_iters:
        alpha = step / cfg.warmup_iters
        factor *= cfg.warmup_factor * (1.0 - alpha) + alpha
    return cfg.lr * factor


def build_optimizer(model: nn.Module, cfg: DetectionConfig) -> torch.optim.SGD:
    """SGD with momentum; norm parameters get `weight_decay_norm` (0, as in Detectron2), the rest `weight_decay`."""
    norm_ids = norm_parameters(model)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if id(p) not in norm_ids], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if id(p) in norm_ids], "weight_decay": cfg.weight_decay_norm},
    ]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=detection_lr(0, cfg), momentum=cfg.momentum)


# ------------------------------------------------------------------------------------------------ stopping safely
class _StopFlag:
    """Set by SIGTERM (SLURM's warning before a kill) or SIGINT; training checkpoints and leaves at a step boundary."""

    def __init__(self) -> None:
        self.signum = 0

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Install the handlers for the duration of training (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C aborts at once
        print(f"\nreceived signal {signum}: saving a checkpoint after this iteration", file=sys.stderr)
        self.signum = signum

    def agreed(self, rt: Runtime) -> int:
        """The signal if any rank got one (all ranks must leave at the same iteration)."""
        if not rt.distributed:
            return self.signum
        flag = torch.tensor([self.signum], dtype=torch.int64, device=rt.device)
        tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
        return int(flag.item())


class Interrupted(SystemExit):
    """Training stopped by a signal after saving a checkpoint; exit status 128 + signal."""

    def __init__(self, signum: int, step: int, path: Path) -> None:
        super().__init__(128 + signum)
        self.step, self.path = step, path


# ---------------------------------------------------------------------------------------------------- the run
def checkpoint_dir(out: str | os.PathLike) -> Path:
    """Folder of the resume checkpoints of the run writing `out` (beside it)."""
    out = Path(out)
    return out.parent / f"{out.stem}-checkpoints"


def _atomic_write_json(path: Path, obj: Any) -> None:
    write_json_atomic(path, obj)


@dataclass
class DetectionData:
    """Where the COCO-format train and val splits live."""

    train_images: Path
    train_annotations: Path
    val_images: Path
    val_annotations: Path


def _fingerprint(cfg: DetectionConfig, arch: str, weights_sha: str | None, data: DetectionData) -> dict[str, Any]:
    """What a checkpoint must match to be resumed (process count may change; the global batch may not)."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("extra", "precision", "sync_bn")}
    files = {str(p): os.path.getsize(p) for p in (data.train_annotations, data.val_annotations)}
    return json.loads(json.dumps({"settings": settings, "arch": arch, "weights": weights_sha, "annotations": files}))


def _resume_state(folder: Path, fingerprint: dict[str, Any], rt: Runtime) -> dict[str, Any] | None:
    """The newest checkpoint made with the same fingerprint; stale ones are moved aside (they would otherwise
    outrank, and so survive pruning instead of, the new run's checkpoints)."""
    if rt.is_main:
        ckpt.remove_stale_temps(folder)  # half-written checkpoints of a killed run
    path = ckpt.latest_checkpoint(folder)
    state = ckpt.load_checkpoint(path) if path is not None else None
    stale = state is not None and state["config"].get("fingerprint") != fingerprint
    if rt.distributed:
        tdist.barrier()  # everyone has read before rank 0 moves anything
    if stale:
        if rt.is_main:
            aside = folder / f"stale-{time.strftime('%Y%m%d-%H%M%S')}"
            aside.mkdir(parents=True, exist_ok=True)
            for p in ckpt.list_checkpoints(folder):
                p.rename(aside / p.name)
            print(f"checkpoints in {folder} were made with other settings, weights or data: moved to {aside}",
                  file=sys.stderr)
        state = None
    if rt.distributed:
        tdist.barrier()
    if state is not None and rt.is_main:
        print(f"resuming from {path} (iteration {state['step']})", file=sys.stderr)
    return state


def _save(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int,
          fingerprint: dict[str, Any], arch: str, cfg: DetectionConfig, keep: int) -> Path:
    path = ckpt.checkpoint_path(folder, step)
    ckpt.save_checkpoint(path, {
        "method": CHECKPOINT_NAME, "hparams": {"arch": arch}, "model": ckpt.unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(), "scaler": None, "epoch": 0, "step": step, "rng": ckpt.rng_state(),
        "config": {"fingerprint": fingerprint, "settings": asdict(cfg)},
    })
    ckpt.prune_checkpoints(folder, keep)
    return path


def _to_device(images: list[torch.Tensor], targets: list[dict], device: torch.device) -> tuple[list, list]:
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
               for t in targets]
    return images, targets


def _as_float32(out: Any) -> Any:
    """Floating tensors in `out` (a tensor, or dicts / lists / tuples of them) cast to float32."""
    if torch.is_tensor(out):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, dict):
        return type(out)((k, _as_float32(v)) for k, v in out.items())
    if isinstance(out, list | tuple):
        return type(out)(_as_float32(v) for v in out)
    return out


def _autocast_forward(forward: Any, device_type: str, dtype: torch.dtype) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, dtype=dtype):
            return _as_float32(forward(*args, **kwargs))

    return run


@contextlib.contextmanager
def autocast_networks(model: nn.Module, device_type: str, dtype: torch.dtype | None) -> Iterator[None]:
    """Autocast only the backbone and the heads' layers of a torchvision Mask R-CNN, with float32 outputs.

    Anchors, box decoding, proposals, RoI sampling and matching, RoIAlign and the losses stay float32: under a
    whole-model bf16 autocast the anchors and proposals would be bf16 (4 px steps above 512 px, 8 px above 1024).
    """
    parts = [model.backbone, model.rpn.head, model.roi_heads.box_head, model.roi_heads.box_predictor,
             model.roi_heads.mask_head, model.roi_heads.mask_predictor] if dtype is not None else []
    parts = [p for p in parts if p is not None]
    for part in parts:  # an instance attribute: the state_dict keys and DDP's view of the model stay the same
        part.forward = _autocast_forward(part.forward, device_type, dtype)
    try:
        yield
    finally:
        for part in parts:
            del part.forward


def train(model: nn.Module, dataset: coco_data.CocoInstances, cfg: DetectionConfig, rt: Runtime, *, out: Path,
          fingerprint: dict[str, Any], arch: str, workers: int = 2, checkpoint_every: int = 5000,
          keep_checkpoints: int = 1, log_every: int = 20) -> nn.Module:
    """Fine-tune in place for cfg.iterations (resuming if a matching checkpoint exists); returns the bare model."""
    if cfg.batch_size % rt.world_size:
        raise ValueError(f"global batch {cfg.batch_size} is not divisible by {rt.world_size} processes")
    per_rank = cfg.batch_size // rt.world_size
    folder = checkpoint_dir(out)
    model.to(rt.device)
    if rt.distributed and rt.device.type == "cuda" and cfg.sync_bn:
        model = to_sync_bn(model)  # before the optimiser is built, so it surely holds the SyncBN parameters
    optimizer = build_optimizer(model, cfg)
    state = _resume_state(folder, fingerprint, rt)
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        if rt.distributed:
            seed_everything(cfg.seed + rt.rank + 7919 * start)  # the saved RNG is rank 0's: keep ranks apart
        else:
            ckpt.set_rng_state(state["rng"])  # single process: continue exactly as without the interruption
    net = model
    if rt.distributed:
        device_ids = [rt.device.index] if rt.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    stream = coco_data.TrainBatchStream(dataset.aspect_groups(), per_rank, cfg.seed, rt.rank, rt.world_size, start)
    # Own generator: otherwise iter(loader) draws its worker base seed from the global RNG, and a resumed run's
    # global stream (scale choices, RoI sampling) would be shifted by that one draw.
    loader = DataLoader(dataset, batch_sampler=stream, collate_fn=coco_data.collate, num_workers=workers,
                        pin_memory=rt.device.type == "cuda", generator=torch.Generator().manual_seed(cfg.seed),
                        worker_init_fn=ignore_stop_signals)  # the main process alone decides when to stop
    amp_dtype = torch.bfloat16 if cfg.precision == "bf16" and rt.device.type == "cuda" else None
    stop = _StopFlag()
    net.train()
    t0 = window = time.perf_counter()
    logged = start
    # Any error (a worker's unreadable image included) stops the signal-ignoring workers, so the run ends.
    with stop.installed(), stop_workers_on_error(loader) as batches:
        for step in range(start, cfg.iterations):
            lr = detection_lr(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, targets = _to_device(*next(batches), rt.device)
            with autocast_networks(model, rt.device.type, amp_dtype):
                losses = net(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at iteration {step}: {losses}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done = step + 1
            if rt.is_main and (done % log_every == 0 or done == cfg.iterations):
                now = time.perf_counter()
                rate = (now - window) / (done - logged)
                window, logged = now, done
                parts = " ".join(f"{k.removeprefix('loss_')}={v.item():.3f}" for k, v in losses.items())
                eta = rate * (cfg.iterations - done)
                print(f"iter {done}/{cfg.iterations} lr={lr:.5f} loss={loss.item():.3f} {parts} "
                      f"{rate:.2f}s/it eta {eta / 60:.1f} min", file=sys.stderr, flush=True)
            signum = stop.agreed(rt)
            periodic = checkpoint_every > 0 and done % checkpoint_every == 0 and done < cfg.iterations
            if (periodic or signum) and rt.is_main:
                _save(folder, model, optimizer, done, fingerprint, arch, cfg, keep_checkpoints)
            if signum:
                if rt.distributed:
                    tdist.barrier()  # nobody exits before rank 0 has written the checkpoint
                raise Interrupted(signum, done, ckpt.checkpoint_path(folder, done))
    if rt.is_main:
        print(f"trained {cfg.iterations - start} iterations in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return ckpt.unwrap(model)


@torch.no_grad()
def predict(model: nn.Module, dataset: coco_data.CocoInstances, rt: Runtime, workers: int = 2) -> list[dict]:
    """COCO results of this rank's share of `dataset` (images rank, rank + world, ...), one image per forward."""
    model.eval()
    share = Subset(dataset, list(range(rt.rank, len(dataset), rt.world_size)))
    loader = DataLoader(share, batch_size=1, collate_fn=coco_data.collate, num_workers=workers)
    results: list[dict] = []
    with stop_workers_on_error(loader) as batches:
        for images, targets in batches:
            outputs = model([im.to(rt.device) for im in images])
            for target, output in zip(targets, outputs):
                results.extend(coco_eval.detections_to_coco(target["image_id"], output, dataset.category_ids))
    return results


def gather_results(results: list[dict], rt: Runtime) -> list[dict] | None:
    """All ranks' results on rank 0 (None elsewhere); identity in a single process."""
    if not rt.distributed:
        return results
    gathered: list[list[dict]] | None = [[] for _ in range(rt.world_size)] if rt.is_main else None
    tdist.gather_object(results, gathered, dst=0)
    return [r for part in gathered for r in part] if gathered is not None else None


def evaluate(model: nn.Module, dataset: coco_data.CocoInstances, coco_gt: COCO, rt: Runtime,
             workers: int = 2) -> dict[str, dict[str, float]] | None:
    """COCO bbox and segm metrics over the whole val split (on rank 0; None on the other ranks)."""
    results = gather_results(predict(model, dataset, rt, workers), rt)
    if results is None:
        return None
    return coco_eval.coco_evaluate(coco_gt, results, dataset.image_ids)


def run_benchmark(weights: str | None, data: DetectionData, out: str | os.PathLike, cfg: DetectionConfig,
                  rt: Runtime, *, arch: str | None = None, workers: int = 2, checkpoint_every: int = 5000,
                  keep_checkpoints_after: bool = False, log_every: int = 20) -> dict[str, Any] | None:
    """Fine-tune from `weights` (None: random init), evaluate, write `out` (rank 0); returns the report on rank 0."""
    out = Path(out)
    state = read_backbone_state(weights) if weights is not None else None
    if state is not None:
        found = infer_arch(state)
        if arch is not None and arch != found:
            raise ValueError(f"--arch {arch} but {weights} holds {found} weights")
        arch = found
    elif arch is None:
        raise ValueError("random init (--weights none) needs --arch")
    weights_sha = sha256_file(weights) if weights is not None else None
    train_coco = coco_data.load_coco(data.train_annotations)
    val_coco = coco_data.load_coco(data.val_annotations)
    if coco_data.category_mapping(train_coco) != coco_data.category_mapping(val_coco):
        raise ValueError(f"{data.train_annotations} and {data.val_annotations} list different categories")
    num_classes = len(coco_data.category_mapping(train_coco))
    train_set = coco_data.CocoInstances(train_coco, data.train_images, for_training=True)
    del train_coco  # only the compact records are needed from here on (DataLoader workers fork this process)
    gc.collect()
    val_set = coco_data.CocoInstances(val_coco, data.val_images, for_training=False)
    seed_everything(cfg.seed)  # same head initialisation on every rank (DDP also broadcasts rank 0's weights)
    model = build_mask_rcnn(
        arch, num_classes, state, train_min_sizes=cfg.train_min_sizes,
        train_max_size=cfg.train_max_size, test_min_size=cfg.test_min_size, test_max_size=cfg.test_max_size,
        heads=cfg.heads, freeze_at=cfg.freeze_at,
    )
    seed_everything(cfg.seed + rt.rank)  # per-rank streams for the random training-time choices (scales, sampling)
    fingerprint = _fingerprint(cfg, arch, weights_sha, data)
    t0 = time.perf_counter()
    model = train(model, train_set, cfg, rt, out=out, fingerprint=fingerprint, arch=arch, workers=workers,
                  checkpoint_every=checkpoint_every, log_every=log_every)
    t1 = time.perf_counter()
    metrics = evaluate(model, val_set, val_coco, rt, workers)
    t2 = time.perf_counter()
    if rt.distributed:
        tdist.barrier()
    if not rt.is_main:
        return None
    report = {
        **coco_eval.headline(metrics),
        "all_metrics": metrics,
        "method": cfg.extra.get("method_name"),
        "weights": {"path": None if weights is None else str(weights), "sha256": weights_sha, "arch": arch},
        "settings": {**{k: v for k, v in asdict(cfg).items() if k != "extra"}, **cfg.extra,
                     "world_size": rt.world_size, "device": rt.device.type},
        "data": {k: str(v) for k, v in asdict(data).items()} | {"num_train_images": len(train_set),
                                                                "num_val_images": len(val_set)},
        "ap_scale": "fraction (multiply by 100 for the paper's tables)",
        # Random boxes essentially never reach IoU 0.5 with a ground-truth box: chance is 0 for every AP.
        "chance": {t: dict.fromkeys(names, 0.0) for t, names in coco_eval.headline(metrics).items()},
        "chance_rule": "0: random boxes do not match objects",
        "seconds": {"train": round(t1 - t0, 1), "eval": round(t2 - t1, 1)},
    }
    _atomic_write_json(out, report)
    if not keep_checkpoints_after:
        for path in ckpt.list_checkpoints(checkpoint_dir(out)):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            checkpoint_dir(out).rmdir()
    return report


def parse_sizes(values: Sequence[int], step: int) -> tuple[int, ...]:
    """CLI --train-min-sizes: two numbers = a range sampled every `step` px; one or 3+ numbers = explicit choices."""
    values = [int(v) for v in values]
    if len(values) == 2:
        return train_sizes(values[0], values[1], step)
    if not values:
        raise ValueError("--train-min-sizes needs at least one size")
    return tuple(values)

