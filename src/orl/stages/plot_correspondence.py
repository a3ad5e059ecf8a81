"""Stage `orl plot-correspondence`: a PNG of top-ranked mined RoI pairs for a seeded set of image pairs."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `orl plot-correspondence`."""
    parser.add_argument("--correspondence", required=True, type=Path, help="mining/correspondence.h5")
    parser.add_argument("--index", required=True, type=Path, help="image index artifact (images.h5)")
    parser.add_argument("--out", required=True, type=Path, help="PNG to write")
    parser.add_argument("--num", type=int, default=8, help="image pairs to draw")
    parser.add_argument("--seed", type=int, default=0, help="seed of the choice of queries (and neighbours)")
    parser.add_argument(
        "--neighbor",
        type=int,
        default=None,
        help="draw each query with its j-th neighbour (0 = nearest; default: random)",
    )
    parser.add_argument("--top", type=int, default=1, help="pairs drawn per image pair (the top-ranked first)")
    parser.add_argument("--panel", type=int, default=256, help="side of one image panel in pixels")
    parser.add_argument("--cols", type=int, default=2, help="image pairs per row")


def run(args: argparse.Namespace) -> None:
    """Draw and report."""
    from orl.viz.correspondence import plot_correspondence

    path = plot_correspondence(
        args.correspondence, args.index, args.out, num=args.num, seed=args.seed, neighbor=args.neighbor,
        top=args.top, panel=args.panel, cols=args.cols,
    )
    print(f"drew {args.num} correspondence pair(s) -> {path}")
