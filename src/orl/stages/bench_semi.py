"""Stage `orl bench-semi`: semi-supervised fine-tuning (top-1) on 1 % / 10 % of the labels of an ImageFolder set."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from orl.bench.classification_cli import add_input_arguments, add_runtime_arguments, write_classification_result
from orl.bench.svm_data import parse_ints


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `orl bench-semi`."""
    add_input_arguments(parser)
    parser.add_argument(
        "--percent",
        type=float,
        nargs="+",
        required=True,
        help="labelled percentage(s), e.g. `1 10`: several run one after the other in this process",
    )
    parser.add_argument(
        "--subset-list",
        type=Path,
        nargs="+",
        default=None,
        help="SimCLR subset file(s), one per --percent (one image file name per line); default: per-class sample",
    )
    parser.add_argument(
        "--out", required=True, type=Path, nargs="+", help="result JSON(s), one per --percent (semi_<p>pct.json)"
    )
    parser.add_argument("--benchmark-name", nargs="+", default=None, help="one per --percent; default semi_<p>pct")
    parser.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs (authors 20)")
    parser.add_argument(
        "--milestones",
        type=parse_ints,
        default=None,
        help="comma-separated epochs of the x0.2 decays (default: 60%% and 80%% of --epochs)",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="images per SGD step")
    parser.add_argument("--backbone-lr", type=float, default=0.01, help="learning rate of the backbone")
    parser.add_argument("--head-lr", type=float, default=1.0, help="learning rate of the linear classifier")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    parser.add_argument(
        "--weight-decay", type=float, default=None, help="for every percent; default: 0 for 1%%, 1e-4 otherwise"
    )
    parser.add_argument("--crop-size", type=int, default=224, help="train crop and test centre-crop side")
    add_runtime_arguments(parser, seed_help="seed of the subset, the head init and the data order")


def _label(percent: float) -> str:
    return f"{percent:g}".replace(".", "p")


def _check_lengths(args: argparse.Namespace) -> None:
    n = len(args.percent)
    for flag in ("out", "subset_list", "benchmark_name"):
        values = getattr(args, flag)
        if values is not None and len(values) != n:
            raise ValueError(f"--{flag.replace('_', '-')} needs one value per --percent ({n}), got {len(values)}")


def run(args: argparse.Namespace) -> None:
    """For each percentage: pick the labelled subset, fine-tune a fresh copy of the weights, write the result JSON."""
    from orl.bench.classification import scan_image_folder
    from orl.bench.common import resolve_device, set_threads
    from orl.bench.weights import sha256_file

    if args.epochs < 1:
        raise ValueError("--epochs must be at least 1")
    _check_lengths(args)
    from orl.runtime import check_gpus

    check_gpus(device=args.device)  # before anything slow: a job on the wrong node fails at once
    set_threads(args.threads)
    paths, labels, classes = scan_image_folder(args.train_dir)
    data = {"train": (paths, labels, classes), "val": scan_image_folder(args.val_dir, classes)[:2]}
    sha = sha256_file(args.weights)
    device = resolve_device(args.device)
    for i, percent in enumerate(args.percent):
        subset_list = args.subset_list[i] if args.subset_list else None
        name = args.benchmark_name[i] if args.benchmark_name else f"semi_{_label(percent)}pct"
        _run_one(args, percent, subset_list, name, args.out[i], data, sha, device)


def _run_one(
    args: argparse.Namespace,
    percent: float,
    subset_list: Path | None,
    benchmark: str,
    out: Path,
    data: dict[str, Any],
    sha: str,
    device: Any,
) -> None:
    from orl.bench.semi_supervised import SemiConfig, read_subset_list, run_semi, sample_subset, subset_from_list
    from orl.bench.weights import load_backbone

    start = time.perf_counter()
    backbone, arch = load_backbone(args.weights, args.arch)  # fresh weights: the previous run fine-tuned its copy
    paths, labels, classes = data["train"]
    val_paths, val_labels = data["val"]
    if subset_list is not None:
        idx = subset_from_list(paths, read_subset_list(subset_list))
        subset = f"list {subset_list}"
    else:
        idx = sample_subset(labels, percent / 100.0, args.seed)
        subset = f"per-class sample, seed {args.seed}"
    weight_decay = args.weight_decay if args.weight_decay is not None else (0.0 if percent <= 1 else 1e-4)
    cfg = SemiConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        backbone_lr=args.backbone_lr,
        head_lr=args.head_lr,
        momentum=args.momentum,
        weight_decay=weight_decay,
        milestones=args.milestones,
        crop_size=args.crop_size,
        seed=args.seed,
        workers=args.workers,
    )
    train = ([paths[i] for i in idx], [labels[i] for i in idx])
    result = run_semi(backbone, arch, train, (val_paths, val_labels), len(classes), cfg, device)
    settings = {
        "arch": arch,
        "percent": percent,
        "subset": subset,
        "num_labelled": len(idx),
        "epochs": cfg.epochs,
        "milestones": cfg.resolved_milestones(),
        "gamma": cfg.gamma,
        "batch_size": cfg.batch_size,
        "backbone_lr": cfg.backbone_lr,
        "head_lr": cfg.head_lr,
        "momentum": cfg.momentum,
        "weight_decay": cfg.weight_decay,
        "crop_size": cfg.crop_size,
        "seed": cfg.seed,
        "num_val": len(val_paths),
        "num_classes": len(classes),
    }
    write_classification_result(out, args, benchmark, result, settings, sha, start, device)
    print(
        f"{args.method_name}: {benchmark} top-1 {result.top1:.2f} ({len(idx)} labelled images, "
        f"{cfg.epochs} epochs) in {time.perf_counter() - start:.1f} s -> {out}"
    )
