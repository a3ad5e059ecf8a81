"""Stage `orl plot-curves`: loss terms and learning rate of one pretraining run (its metrics.csv) as a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `orl plot-curves`."""
    parser.add_argument("--metrics", required=True, type=Path, help="results/pretrain/<method>/metrics.csv")
    parser.add_argument("--out", required=True, type=Path, help="PNG to write")
    parser.add_argument("--title", default=None, help="figure title (default: the run's folder name)")
    parser.add_argument("--width", type=int, default=800, help="PNG width in pixels")
    parser.add_argument("--height", type=int, default=600, help="PNG height in pixels")


def run(args: argparse.Namespace) -> None:
    """Read the CSV and draw."""
    from orl.viz.curves import plot_curves

    path = plot_curves(args.metrics, args.out, title=args.title, width=args.width, height=args.height)
    print(f"training curves of {args.metrics} -> {path}")
