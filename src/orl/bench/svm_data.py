"""Flags and loading shared by `orl bench-svm` and `orl bench-lowshot`: the weights, the data, the feature cache.

Kept free of torch at import time: stage modules import it to build their parsers.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DEFAULT_FEATURES_NAME = "voc07_features.h5"


def parse_floats(text: str) -> list[float]:
    """'1,10,0.5' -> [1.0, 10.0, 0.5]."""
    return [float(v) for v in text.split(",") if v.strip()]


def parse_ints(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]."""
    return [int(v) for v in text.split(",") if v.strip()]


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Weights, data and feature-extraction flags of the SVM benchmarks."""
    parser.add_argument(
        "--weights", required=True, type=Path, help="backbone.pth, a torchvision checkpoint or model.pt"
    )
    parser.add_argument("--method-name", required=True, help="name of the method in the result files")
    parser.add_argument("--arch", default=None, help="resnet18/34/50/101/152 (default: inferred from the weights)")
    parser.add_argument("--data", choices=("voc", "demo"), required=True, help="VOC2007, or the demo COCO scenes")
    parser.add_argument("--voc-root", type=Path, help="VOCdevkit/VOC2007 (JPEGImages, Annotations, ImageSets/Main)")
    parser.add_argument(
        "--demo-root", type=Path, help="demo dataset: train/, val/, annotations/instances_{train,val}.json"
    )
    parser.add_argument(
        "--features",
        type=Path,
        default=None,
        help=f"feature cache (.h5), reused when it matches; default: {DEFAULT_FEATURES_NAME} beside --out",
    )
    parser.add_argument("--image-size", type=int, default=224, help="images are resized to this square (authors 224)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads and parallel SVM fits")
    parser.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:N")
    parser.add_argument(
        "--costs", type=parse_floats, default=None, help="comma-separated SVM costs (default: authors')"
    )


def load_sets(args: argparse.Namespace) -> dict[str, Any]:
    """{"trainval": MultiLabelSet, "test": MultiLabelSet} for --data voc (trainval/test) or demo (train/val)."""
    from orl.bench.multilabel import read_coco_multilabel, read_voc

    if args.data == "voc":
        if args.voc_root is None:
            raise ValueError("--data voc needs --voc-root (the VOCdevkit/VOC2007 folder)")
        sets = {"trainval": read_voc(args.voc_root, "trainval"), "test": read_voc(args.voc_root, "test")}
    else:
        if args.demo_root is None:
            raise ValueError("--data demo needs --demo-root (the folder `orl demo-data` wrote)")
        root = args.demo_root
        sets = {
            split: read_coco_multilabel(root / "annotations" / f"instances_{src}.json", root / src)
            for split, src in (("trainval", "train"), ("test", "val"))
        }
    if sets["trainval"].classes != sets["test"].classes:
        raise ValueError("trainval and test name different classes")
    return sets


def load_features(args: argparse.Namespace, out: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(sets, features per split, provenance) — features from the cache when it matches, else extracted and cached."""
    from orl.bench.common import resolve_device, set_threads
    from orl.bench.features import compute_or_load, feature_params
    from orl.bench.weights import infer_arch, load_backbone, read_backbone_state, sha256_file

    set_threads(args.threads)
    sets = load_sets(args)
    sha = sha256_file(args.weights)
    arch = infer_arch(read_backbone_state(args.weights))
    if args.arch is not None and args.arch != arch:
        raise ValueError(f"--arch {args.arch} given but {args.weights} holds a {arch}")
    params = feature_params(sha, arch, args.image_size)
    path = args.features or out.parent / DEFAULT_FEATURES_NAME
    device = resolve_device(args.device)

    feats, reused = compute_or_load(
        path,
        lambda: load_backbone(args.weights, arch)[0],
        sets,
        params,
        batch_size=args.batch_size,
        workers=args.workers,
        device=device,
        attrs={"weights": str(args.weights), "method": args.method_name, "data": args.data},
    )
    info = {"weights_sha256": sha, "arch": arch, "features": str(path), "features_reused": reused}
    return sets, feats, info
