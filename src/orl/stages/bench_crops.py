"""Stage `orl bench-crops`: an ImageFolder object-classification set (train/ and val/) cut from COCO-format boxes."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `orl bench-crops`."""
    parser.add_argument("--demo-root", type=Path, help="demo dataset (train/, val/, annotations/instances_*.json)")
    parser.add_argument("--train-annotations", type=Path, help="COCO instances JSON of the train split")
    parser.add_argument("--train-images", type=Path, help="image folder of the train split")
    parser.add_argument("--val-annotations", type=Path, help="COCO instances JSON of the val split")
    parser.add_argument("--val-images", type=Path, help="image folder of the val split")
    parser.add_argument("--out", required=True, type=Path, help="folder to (re)write: <out>/{train,val}/<class>/*.jpg")
    parser.add_argument("--size", type=int, default=64, help="side of the square crops (px)")
    parser.add_argument("--context", type=float, default=0.1, help="context added on each side, fraction of the box")
    parser.add_argument("--min-box", type=float, default=4.0, help="skip boxes with a side below this (px)")
    parser.add_argument("--max-train-per-class", type=int, default=None, help="cap train crops per class (demo)")
    parser.add_argument("--max-val-per-class", type=int, default=None, help="cap val crops per class (demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the capped samples")


def run(args: argparse.Namespace) -> None:
    """Cut, resize and write every non-crowd box of both splits."""
    from orl.bench.crops import build_crop_folder

    if args.demo_root is not None:
        root = args.demo_root
        splits = {s: (root / "annotations" / f"instances_{s}.json", root / s) for s in ("train", "val")}
    else:
        given = (args.train_annotations, args.train_images, args.val_annotations, args.val_images)
        if any(v is None for v in given):
            raise ValueError(
                "give --demo-root, or all of --train-annotations/--train-images/--val-annotations/--val-images"
            )
        splits = {"train": given[:2], "val": given[2:]}
    start = time.perf_counter()
    caps = {"train": args.max_train_per_class, "val": args.max_val_per_class}
    counts = build_crop_folder(
        splits,
        args.out,
        size=args.size,
        context=args.context,
        min_box=args.min_box,
        max_per_class=caps,
        seed=args.seed,
    )
    totals = ", ".join(f"{sum(c.values())} {s} crops" for s, c in counts.items())
    print(
        f"object crops ({args.size} px, {len(counts['train'])} classes): {totals} -> {args.out} "
        f"in {time.perf_counter() - start:.1f} s"
    )
