"""Stage `orl pretrain`: image-level self-supervised pretraining (BYOL = ORL stage 1; MoCo v2 / SimCLR baselines).

Runs as one process (`orl pretrain ...`) or under torchrun (`torchrun --nproc_per_node=G -m orl.cli pretrain ...`,
any number of nodes); --batch-size is per process, the learning rate follows the global batch. Writes --out
(model.pt) once at the end; checkpoints, metrics.csv and TensorBoard logs go beside it. Interrupted by SIGTERM or
SIGINT it saves a checkpoint and exits with 128 + signal (143 / 130); rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

def parse_value(text: str) -> Any:
    """'512' -> 512, '1e-4' -> 0.0001, 'true' -> True, 'none' -> None, '[1, 2]' -> [1, 2], else the string."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


def parse_method_args(items: Sequence[str]) -> dict[str, Any]:
    """key=value strings -> kwargs (for build_method or build_dataset)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {item!r}")
        out[key.strip().replace("-", "_")] = parse_value(value.strip())
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `orl pretrain`."""
    p = parser
    p.add_argument("--method", required=True, help="self-supervised method: byol, moco_v2, simclr, orl (orl.methods.METHODS)")
    p.add_argument("--index", required=True, type=Path, help="image index artifact (orl index)")
    p.add_argument("--out", required=True, type=Path, help="final model file to write (model.pt)")
    p.add_argument("--arch", default="resnet50", help="backbone: resnet18/34/50/101/152 (default resnet50)")
    p.add_argument("--epochs", type=int, default=800, help="training epochs (paper: 800)")
    p.add_argument("--batch-size", type=int, default=64, help="images per process per micro-batch (paper: 64 x 8)")
    p.add_argument("--accum-steps", type=int, default=1, help="micro-batches per optimiser step")
    p.add_argument("--image-size", type=int, default=224, help="side of the augmented views (paper: 224)")
    p.add_argument("--lr", type=float, default=None,
                   help="base lr at --base-batch images, scaled by the global batch (default: the method's)")
    p.add_argument("--base-batch", type=int, default=None, help="batch at which --lr applies (default: the method's)")
    p.add_argument("--weight-decay", type=float, default=None, help="weight decay (default: the method's)")
    p.add_argument("--warmup-epochs", type=float, default=None,
                   help="linear warmup epochs (default: the method's recipe: BYOL/ORL 4, MoCo v2 0, SimCLR 10)")
    p.add_argument("--workers", type=int, default=4, help="DataLoader worker processes per training process")
    p.add_argument("--pipeline", choices=("auto", "cpu", "device"), default="auto",
                   help="input pipeline: cpu = workers augment everything (the reference); device = workers decode "
                        "and draw the parameters, the training device crops, resizes, flips and does the photometric "
                        "ops in batches; auto = device on a GPU, cpu on CPU")
    p.add_argument("--decode", choices=("worker", "device"), default="worker",
                   help="device pipeline only: decode JPEGs in the DataLoader workers (libjpeg-turbo) or batched "
                        "on the training device (torchvision.io.decode_jpeg; other formats still in the workers)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process (default: torch's)")
    p.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints")
    p.add_argument("--keep-checkpoints", type=int, default=2, help="checkpoints kept (0: all)")
    p.add_argument("--log-every", type=int, default=10, help="optimiser steps per metrics.csv row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16",
                   help="autocast dtype on GPU (CPU always uses fp32)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="GPU: keep NCHW")
    p.add_argument("--sync-bn", dest="sync_bn", action="store_true", default=None,
                   help="GPU DDP: SyncBatchNorm (default: the method's recipe; all but MoCo v2 use it)")
    p.add_argument("--no-sync-bn", dest="sync_bn", action="store_false",
                   help="GPU DDP: per-GPU BatchNorm (MoCo v2's default, with Shuffle-BN of the key encoder)")
    p.add_argument("--method-args", nargs="*", default=[], metavar="KEY=VALUE",
                   help="method hyper-parameters, e.g. proj_hidden=512 proj_dim=128 queue_size=4096")
    p.add_argument("--dataset-args", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra arguments of the method's training dataset (orl.data.datasets.build_dataset)")
    p.add_argument("--correspondence", type=Path, default=None,
                   help="--method orl: the stage-2 artifact with kept boxes and mined RoI pairs (correspondence.h5)")
    p.add_argument("--roi-size", type=int, default=96, help="--method orl: side of the RoI patches (paper: 96)")
    add_knn_monitor_arguments(p)


def add_knn_monitor_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of the online kNN monitor (orl.train.knn_monitor); it is on when --knn-train-dir is given."""
    p.add_argument("--knn-train-dir", type=Path, default=None,
                   help="kNN monitor: ImageFolder of labelled crops forming the bank (off when not given)")
    p.add_argument("--knn-val-dir", type=Path, default=None, help="kNN monitor: ImageFolder of the query crops")
    p.add_argument("--knn-every", type=int, default=1, help="kNN monitor: epochs between evaluations")
    p.add_argument("--knn-k", type=int, default=20, help="kNN monitor: neighbours that vote")
    p.add_argument("--knn-temperature", type=float, default=0.07, help="kNN monitor: vote weight exp(cos / T)")
    p.add_argument("--knn-image-size", type=int, default=None, help="kNN monitor: crop side (default --image-size)")


def build_knn_monitor(args: argparse.Namespace):  # noqa: ANN201 - torch-heavy return type imported lazily
    """The KnnMonitor of --knn-* flags, or None when --knn-train-dir is not given."""
    if args.knn_train_dir is None:
        return None
    if args.knn_val_dir is None:
        raise ValueError("--knn-train-dir needs --knn-val-dir (the query crops of the kNN monitor)")
    from orl.train.knn_monitor import KnnMonitor, KnnMonitorConfig

    return KnnMonitor(KnnMonitorConfig(
        train_dir=args.knn_train_dir, val_dir=args.knn_val_dir, image_size=args.knn_image_size or args.image_size,
        every=args.knn_every, k=args.knn_k, temperature=args.knn_temperature,
    ))


def run(args: argparse.Namespace) -> None:
    """Train; raises SystemExit(128 + signal) when interrupted after saving a checkpoint."""
    from orl.data.image_index import load_index  # torch is imported lazily, as in every stage
    from orl.data.device_augment import resolve_pipeline
    from orl.methods import METHODS, build_training_dataset
    from orl.runtime import check_gpus, configure_determinism, init_distributed, set_threads, shutdown_distributed
    from orl.train.trainer import TrainConfig, Trainer

    if args.method not in METHODS:
        raise ValueError(f"unknown method {args.method!r}; choose from {', '.join(sorted(METHODS))}")
    method_args = parse_method_args(args.method_args)
    method_args.setdefault("arch", args.arch)
    dataset_args = parse_method_args(args.dataset_args)
    if args.method == "orl":
        if args.correspondence is None:
            raise ValueError("--method orl needs --correspondence: the stage-2 artifact mining/correspondence.h5")
        dataset_args.update(correspondence=args.correspondence, roi_size=args.roi_size)
    elif args.correspondence is not None:
        raise ValueError(f"--correspondence is only used by --method orl, not by --method {args.method}")
    check_gpus(device=args.device, multi_node=True)  # before anything slow: a job on the wrong node fails at once
    rt = init_distributed(args.device)
    try:
        set_threads(args.threads)
        configure_determinism(rt.device)
        index = load_index(args.index)
        pipeline = resolve_pipeline(args.pipeline, rt.device)
        decode = args.decode if pipeline == "device" else "worker"  # the cpu pipeline always decodes in the workers
        # The method's own view recipes (orl.methods: Method.recipe), never another method's.
        dataset = build_training_dataset(args.method, index, image_size=args.image_size, seed=args.seed,
                                         pipeline=pipeline, decode=decode, **dataset_args)
        cfg = TrainConfig(
            method=args.method, method_args=method_args, epochs=args.epochs, batch_size=args.batch_size,
            accum_steps=args.accum_steps, lr=args.lr, base_batch=args.base_batch, weight_decay=args.weight_decay,
            warmup_epochs=args.warmup_epochs, workers=args.workers, checkpoint_every=args.checkpoint_every,
            keep_checkpoints=args.keep_checkpoints, log_every=args.log_every, seed=args.seed,
            precision=args.precision, channels_last=args.channels_last, sync_bn=args.sync_bn,
            image_size=args.image_size, pipeline=pipeline, decode=decode,
        )
        meta = {"index": str(args.index), "image_list_digest": index.digest, "num_images": len(index)}
        if args.method == "orl":
            from orl.artifacts import read_attrs

            meta.update(correspondence=str(args.correspondence), roi_size=args.roi_size,
                        correspondence_params_digest=read_attrs(args.correspondence)["params_digest"])
        # Rank 0 alone evaluates the monitor: it runs no collective, so the other ranks just wait at the next one.
        monitor = build_knn_monitor(args) if rt.is_main else None
        result = Trainer(cfg, dataset, args.out, runtime=rt, meta=meta, knn_monitor=monitor).fit()
    finally:
        shutdown_distributed()
    if not result.finished:
        if rt.is_main:
            print(f"interrupted at step {result.step}/{result.total_steps}; checkpoint {result.checkpoint}; "
                  "rerun the same command to resume", file=sys.stderr)
        raise SystemExit(result.exit_code)
    if rt.is_main:
        print(f"trained {args.method} for {result.step} steps -> {result.model_path}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stage without the `orl` dispatcher (python -m orl.stages.pretrain ...)."""
    parser = argparse.ArgumentParser(prog="orl pretrain", description=__doc__.splitlines()[0])
    add_arguments(parser)
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
