"""How well the proposals cover real objects: recall of COCO ground-truth boxes by raw and by filtered proposals.

Only a diagnostic (ORL itself never sees labels): it tells whether a proposal backend or a `max_side` shortcut
loses objects before mining, and how many boxes the §2d filter leaves per image.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import defaultdict
from typing import Any

import numpy as np

from orl.artifacts import Csr
from orl.data.image_index import DatasetError, ImageIndex, coco_id
from orl.mining.box_filter import box_iou, filter_boxes, size_aspect_mask

IOU_THRESHOLDS = (0.5, 0.7)
# COCO's area ranges (in pixels of the original image)
AREA_RANGES = {"small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, float("inf"))}


def usable_annotations(annotations: str | os.PathLike, image_ids: np.ndarray) -> dict[int, list[dict[str, Any]]]:
    """Non-crowd COCO annotations with a positive-size bbox per listed image id; warns with counts of what it drops.

    A malformed entry (image id not an integer, bbox not four numbers) is an error naming the file and the entry.
    """
    with open(annotations) as f:
        data = json.load(f)
    wanted = {int(i) for i in image_ids}
    per_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    degenerate = elsewhere = 0
    for k, ann in enumerate(data.get("annotations", [])):
        if ann.get("iscrowd", 0):
            continue  # crowd regions are not single objects; COCO's own recall ignores them too
        image_id = coco_id(ann.get("image_id"), annotations, f"annotations[{k}].image_id")
        bbox = ann.get("bbox")
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            raise DatasetError(f"{annotations}: annotations[{k}].bbox is {bbox!r}, not [x, y, w, h]") from None
        if image_id not in wanted:
            elsewhere += 1
        elif not (w > 0 and h > 0):
            degenerate += 1
        else:
            per_image[image_id].append({**ann, "bbox": [x, y, w, h]})
    if degenerate or elsewhere:
        warnings.warn(f"{annotations}: left out {degenerate} annotation(s) with a zero or negative box size and "
                      f"{elsewhere} of image ids not in the image index", stacklevel=2)
    return per_image


def load_gt_boxes(annotations: str | os.PathLike, image_ids: np.ndarray) -> list[np.ndarray]:
    """Non-crowd, non-degenerate COCO boxes (x, y, w, h) float64 per image, in the order of `image_ids`."""
    per_image = usable_annotations(annotations, image_ids)
    return [np.asarray([a["bbox"] for a in per_image.get(int(i), [])], dtype=np.float64).reshape(-1, 4)
            for i in image_ids]


def best_iou(gt: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """For each ground-truth box, its highest IoU with any of `boxes` (0 when there are none)."""
    if len(gt) == 0:
        return np.zeros(0)
    if len(boxes) == 0:
        return np.zeros(len(gt))
    return box_iou(gt, boxes).max(axis=1)


def _recalls(ious: np.ndarray, prefix: str = "recall@") -> dict[str, float | None]:
    return {f"{prefix}{t}": (float(np.mean(ious >= t)) if len(ious) else None) for t in IOU_THRESHOLDS}


def proposal_quality(
    boxes: Csr,
    gt: list[np.ndarray] | None,
    min_size: float = 96,
    max_aspect: float = 3.0,
    iou_thresh: float = 0.5,
    max_boxes: int = 100,
) -> dict[str, Any]:
    """Recall of ground truth at IoU 0.5 / 0.7 by raw and filtered boxes, box counts, and recall by object size.

    With gt None (an unlabelled dataset) only the box counts are filled in; every recall is None.
    """
    has_gt = gt is not None
    if gt is None:
        gt = [np.zeros((0, 4))] * len(boxes)
    if len(boxes) != len(gt):
        raise ValueError(f"{len(boxes)} images of proposals but {len(gt)} of ground truth")
    raw_best, kept_best, gt_all = [], [], []
    raw_counts = np.zeros(len(boxes), dtype=np.int64)
    kept_counts = np.zeros(len(boxes), dtype=np.int64)
    fallback = 0
    for i in range(len(boxes)):
        raw = boxes[i]
        kept = filter_boxes(raw, min_size, max_aspect, iou_thresh, max_boxes)
        raw_counts[i], kept_counts[i] = len(raw), len(kept)
        if len(raw) and not size_aspect_mask(raw, min_size, max_aspect).any():
            fallback += 1
        raw_best.append(best_iou(gt[i], raw))
        kept_best.append(best_iou(gt[i], kept))
        gt_all.append(gt[i])
    raw_iou = np.concatenate(raw_best) if raw_best else np.zeros(0)
    kept_iou = np.concatenate(kept_best) if kept_best else np.zeros(0)
    gts = np.concatenate(gt_all) if gt_all else np.zeros((0, 4))
    area = gts[:, 2] * gts[:, 3]

    by_area: dict[str, Any] = {}
    for name, (lo, hi) in AREA_RANGES.items():
        sel = (area >= lo) & (area < hi)
        by_area[name] = {
            "num_gt_boxes": int(sel.sum()),
            "raw": _recalls(raw_iou[sel]),
            "filtered": _recalls(kept_iou[sel]),
        }
    n = max(1, len(boxes))
    return {
        "num_images": len(boxes),
        "ground_truth": has_gt,
        "num_gt_boxes": int(len(gts)) if has_gt else None,
        "iou_thresholds": list(IOU_THRESHOLDS),
        "filter": {"min_size": min_size, "max_aspect": max_aspect, "iou_thresh": iou_thresh, "max_boxes": max_boxes},
        "raw": {
            **_recalls(raw_iou),
            "mean_boxes_per_image": float(raw_counts.sum() / n),
            "median_boxes_per_image": float(np.median(raw_counts)) if len(raw_counts) else 0.0,
            "images_without_boxes": int(np.sum(raw_counts == 0)),
        },
        "filtered": {
            **_recalls(kept_iou),
            "mean_boxes_per_image": float(kept_counts.sum() / n),
            "median_boxes_per_image": float(np.median(kept_counts)) if len(kept_counts) else 0.0,
            "images_at_max_boxes": int(np.sum(kept_counts >= max_boxes)),
            "images_using_fallback_box": fallback,
        },
        "recall_by_gt_area": by_area if has_gt else None,
    }


def index_quality(boxes: Csr, index: ImageIndex, **filter_params: Any) -> dict[str, Any]:
    """proposal_quality against the COCO annotations the index was built from (box counts only without them)."""
    gt = load_gt_boxes(index.annotations, index.ids) if index.annotations is not None else None
    return proposal_quality(boxes, gt, **filter_params)
