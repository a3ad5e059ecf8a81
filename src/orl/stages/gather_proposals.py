"""Stage `orl gather-proposals`: join proposal shards into one artifact in image order (+ a quality report)."""

from __future__ import annotations

import argparse
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from orl.artifacts import Csr, open_artifact, write_artifact
from orl.data.image_index import load_index
from orl.mining.parts import check_parts, read_part
from orl.mining.proposal_quality import index_quality
from orl.stages.proposals import STAGE as PART_STAGE

STAGE = "proposals"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `orl gather-proposals`."""
    parser.add_argument("--index", required=True, type=Path, help="image index artifact (images.h5)")
    parser.add_argument("--parts", required=True, nargs="+", type=Path, help="part artifacts from `orl proposals`")
    parser.add_argument("--out", required=True, type=Path, help="gathered artifact to write (proposals.h5)")
    parser.add_argument(
        "--quality",
        type=Path,
        default=None,
        help="quality JSON (default: <out stem>_quality.json beside --out; GT recall needs a COCO-annotated index)",
    )
    parser.add_argument("--filter-min-size", type=float, default=96, help="quality report: box filter min side")
    parser.add_argument("--filter-max-aspect", type=float, default=3.0, help="quality report: box filter max aspect")
    parser.add_argument("--filter-iou", type=float, default=0.5, help="quality report: box filter max IoU")
    parser.add_argument("--filter-max-boxes", type=int, default=100, help="quality report: box filter max boxes")


def gather_parts(index_path: str | os.PathLike, parts: Sequence[str | os.PathLike]) -> tuple[Csr, dict, list, dict]:
    """Check the parts against the index and each other, then join them in image order.

    Returns (boxes, params, failed, provenance); raises ArtifactError when a part is from another image list,
    another parameter set, or the parts do not cover every image exactly once.
    """
    index = load_index(index_path)
    infos = [read_part(p, PART_STAGE, index_path, "boxes") for p in parts]
    ordered = check_parts(infos, len(index), index_path, "proposals")
    part_offsets = []
    for part in ordered:
        with open_artifact(part.path, stage=PART_STAGE, like=index_path) as art:
            part_offsets.append(art.dataset("boxes/offsets")[()])
    # One preallocated array filled part by part: COCO's ~3e8 raw boxes are ~5 GB, so no second copy.
    total = sum(int(o[-1]) for o in part_offsets)
    values = np.empty((total, 4), dtype=np.int32)
    offsets = [np.zeros(1, dtype=np.int64)]
    base = 0
    for part, part_off in zip(ordered, part_offsets, strict=True):
        count = int(part_off[-1])
        with open_artifact(part.path, stage=PART_STAGE, like=index_path) as art:
            if count:
                values[base : base + count] = art.dataset("boxes/values")[()].reshape(-1, 4)
        offsets.append(part_off[1:] + base)
        base += count
    failed = [f for part in ordered for f in part.attrs.get("failed", [])]
    opencv = {str(p.attrs.get("opencv_version", "")) for p in ordered}
    provenance = {"opencv_version": ",".join(sorted(opencv)), "parts": len(ordered)}
    return Csr(values, np.concatenate(offsets)), ordered[0].params, failed, provenance


def quality_path(out: Path, quality: Path | None) -> Path:
    """Where the quality JSON goes: the given path, else <out stem>_quality.json beside the artifact."""
    return quality if quality is not None else out.with_name(f"{out.stem}_quality.json")


def run_gather(
    index_path: str | os.PathLike,
    parts: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    quality: str | os.PathLike | None = None,
    filter_params: dict[str, Any] | None = None,
) -> tuple[Path, Path, float]:
    """Gather the parts into `out` and write the quality JSON beside it (recalls only with COCO annotations).

    Returns (artifact path, quality JSON path, mean raw boxes per image).
    """
    out = Path(out)
    boxes, params, failed, provenance = gather_parts(index_path, parts)
    index = load_index(index_path)
    if failed:
        listing = "; ".join(f"{name}: {why}" for _, name, why in failed[:10])
        warnings.warn(f"{len(failed)} image(s) have zero proposals because they failed: {listing}", stacklevel=2)
    path = write_artifact(
        out,
        stage=STAGE,
        image_list_digest=index.digest,
        params=params,
        arrays={"boxes": boxes},
        attrs={"failed": failed, "num_images": len(index), "num_boxes": int(len(boxes.values)), **provenance},
    )
    # Always written (a fixed Snakemake output); recalls are null when the index has no COCO annotations.
    report = index_quality(boxes, index, **(filter_params or {}))
    report.update(proposals=params, failed_images=len(failed), artifact=str(path))
    qpath = quality_path(out, Path(quality) if quality is not None else None)
    qpath.parent.mkdir(parents=True, exist_ok=True)
    tmp = qpath.with_name(f".{qpath.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, qpath)  # atomic, like the artifacts
    return path, qpath, float(boxes.lengths().mean()) if len(boxes) else 0.0


def run(args: argparse.Namespace) -> None:
    """Gather, write, and summarise."""
    filter_params = {
        "min_size": args.filter_min_size,
        "max_aspect": args.filter_max_aspect,
        "iou_thresh": args.filter_iou,
        "max_boxes": args.filter_max_boxes,
    }
    path, qpath, mean_raw = run_gather(args.index, args.parts, args.out, args.quality, filter_params)
    print(f"gathered {len(args.parts)} part(s): {mean_raw:.0f} raw boxes/image -> {path}")
    q = json.loads(qpath.read_text())
    recall = (
        f"GT recall@0.5 raw {q['raw']['recall@0.5']:.3f}, filtered {q['filtered']['recall@0.5']:.3f}; "
        if q["ground_truth"] and q["num_gt_boxes"]
        else ""
    )
    print(f"{recall}{q['filtered']['mean_boxes_per_image']:.1f} kept boxes/image -> {qpath}")
