"""Stage `orl bench-linear`: linear classification (top-1) on a frozen backbone, ImageFolder train/val folders."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from orl.bench.classification_cli import add_input_arguments, add_runtime_arguments, write_classification_result
from orl.bench.svm_data import parse_ints


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `orl bench-linear`."""
    add_input_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help="result JSON (bench/<method>/<benchmark>.json)")
    parser.add_argument(
        "--benchmark-name", default="linear", help="e.g. linear_imagenet, linear_places205, linear_demo"
    )
    parser.add_argument("--epochs", type=int, default=28, help="28 ImageNet, 14 Places205, 84 iNat18")
    parser.add_argument(
        "--milestones",
        type=parse_ints,
        default=None,
        help="comma-separated epochs of the x0.1 decays (default: every round(2E/7) epochs, as the authors)",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="images per SGD step")
    parser.add_argument("--lr", type=float, default=0.01, help="initial learning rate")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="SGD weight decay")
    parser.add_argument("--no-nesterov", action="store_true", help="plain momentum (the authors' configs use Nesterov)")
    parser.add_argument("--crop-size", type=int, default=224, help="train crop and test centre-crop side")
    parser.add_argument("--color-aug", action="store_true", help="add ColorJitter 0.4 + Lighting (authors' ImageNet)")
    parser.add_argument(
        "--head",
        choices=("authors", "gap"),
        default="authors",
        help="authors: 2x2 pool + BN + linear; gap: global pool + linear",
    )
    parser.add_argument("--eval-every", type=int, default=0, help="also evaluate every N epochs (0: at the end only)")
    add_runtime_arguments(parser, seed_help="seed of the head init and the data order")


def run(args: argparse.Namespace) -> None:
    """Load the backbone and the folders, train the head, write the result JSON."""
    from orl.bench.classification import scan_image_folder
    from orl.bench.common import resolve_device, set_threads
    from orl.bench.linear import TrainConfig, run_linear
    from orl.bench.weights import load_backbone, sha256_file

    if args.epochs < 1:
        raise ValueError("--epochs must be at least 1")
    from orl.runtime import check_gpus

    check_gpus(device=args.device)  # before anything slow: a job on the wrong node fails at once
    set_threads(args.threads)
    start = time.perf_counter()
    backbone, arch = load_backbone(args.weights, args.arch)
    train_paths, train_labels, classes = scan_image_folder(args.train_dir)
    val_paths, val_labels, _ = scan_image_folder(args.val_dir, classes)
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        nesterov=not args.no_nesterov,
        milestones=args.milestones,
        crop_size=args.crop_size,
        color_aug=args.color_aug,
        head=args.head,
        seed=args.seed,
        workers=args.workers,
        eval_every=args.eval_every,
    )
    device = resolve_device(args.device)
    result = run_linear(backbone, arch, (train_paths, train_labels), (val_paths, val_labels), len(classes), cfg, device)
    settings = {
        "arch": arch,
        "epochs": cfg.epochs,
        "milestones": cfg.resolved_milestones(),
        "gamma": cfg.gamma,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "momentum": cfg.momentum,
        "nesterov": cfg.nesterov,
        "weight_decay": cfg.weight_decay,
        "crop_size": cfg.crop_size,
        "color_aug": cfg.color_aug,
        "head": cfg.head,
        "seed": cfg.seed,
        "num_train": len(train_paths),
        "num_val": len(val_paths),
        "num_classes": len(classes),
    }
    write_classification_result(
        args.out, args, args.benchmark_name, result, settings, sha256_file(args.weights), start, device
    )
    print(
        f"{args.method_name}: {args.benchmark_name} top-1 {result.top1:.2f} ({len(classes)} classes, "
        f"{len(train_paths)} train / {len(val_paths)} val, {cfg.epochs} epochs) in "
        f"{time.perf_counter() - start:.1f} s -> {args.out}"
    )
