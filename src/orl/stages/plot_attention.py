"""Stage `orl plot-attention`: attention maps (res5 channel mean) of pretrained backbones, side by side, as a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `orl plot-attention`."""
    parser.add_argument(
        "--models", required=True, nargs="+", metavar="NAME=PATH",
        help="one column per model: NAME=results/pretrain/<m>/model.pt or NAME=results/export/<m>/backbone.pth",
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=Path, help="folder of images or image index (.h5); its first --num are drawn")
    src.add_argument("--paths", nargs="+", type=Path, help="explicit image files (all drawn, in this order)")
    parser.add_argument("--out", required=True, type=Path, help="PNG to write")
    parser.add_argument("--num", type=int, default=6, help="images (rows) taken from --images")
    parser.add_argument("--size", type=int, default=160, help="images are resized to size x size before the backbone")
    parser.add_argument("--panel", type=int, default=None, help="side of one panel in pixels (default: --size)")
    parser.add_argument("--cmap", default="jet", help="matplotlib colormap of the heatmap (jet, inferno, ...)")
    parser.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity over the image, in [0, 1]")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def run(args: argparse.Namespace) -> None:
    """Load each model in turn, compute the maps, draw the grid."""
    from orl.runtime import set_threads
    from orl.viz.attention import parse_models, plot_attention

    set_threads(args.threads)
    models = parse_models(args.models)
    path = plot_attention(
        models, args.out, images=args.images, paths=args.paths, num=args.num, size=args.size, panel=args.panel,
        cmap=args.cmap, alpha=args.alpha, device=args.device,
    )
    print(f"attention maps of {', '.join(models)} -> {path}")
