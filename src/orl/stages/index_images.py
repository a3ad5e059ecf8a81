"""Stage `orl index`: turn a dataset (COCO JSON + images, or a plain folder) into the ordered image list."""

from __future__ import annotations

import argparse
from pathlib import Path

from orl.data.image_index import build_index, write_index


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `orl index`."""
    parser.add_argument("--images", required=True, type=Path, help="folder holding the images")
    parser.add_argument("--annotations", type=Path, default=None, help="COCO instances JSON (order = its images)")
    parser.add_argument("--out", required=True, type=Path, help="index artifact to write (.h5)")
    parser.add_argument("--threads", type=int, default=1, help="images decoded in parallel")


def run(args: argparse.Namespace) -> None:
    """Build and write the index, then report what was left out."""
    index = build_index(args.images, args.annotations, threads=args.threads)
    write_index(index, args.out)
    note = f", left out {len(index.skipped)} unreadable" if index.skipped else ""
    print(f"indexed {len(index)} images from {index.root}{note} -> {args.out} (digest {index.digest})")
