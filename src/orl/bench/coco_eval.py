"""COCO box and mask AP of detector outputs with pycocotools' COCOeval (the numbers the paper reports)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

IOU_TYPES = ("bbox", "segm")
MASK_THRESHOLD = 0.5  # Detectron2 / torchvision binarise pasted mask probabilities at 0.5
# COCOeval.stats positions of the three numbers we report.
_STAT_NAMES = {"AP": 0, "AP50": 1, "AP75": 2}
_ALL_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """Binary (H, W) mask -> COCO compressed RLE with a str `counts` (JSON- and pickle-friendly)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def detections_to_coco(image_id: int, output: Mapping[str, torch.Tensor], category_ids: Sequence[int]) -> list[dict]:
    """One image's torchvision outputs (boxes xyxy, labels 1..K, scores, masks N x 1 x H x W probabilities) ->
    COCO result dicts with bbox (xywh) and segmentation (RLE of probability > 0.5)."""
    boxes = output["boxes"].detach().float().cpu().numpy()
    scores = output["scores"].detach().float().cpu().numpy()
    labels = output["labels"].detach().cpu().numpy()
    masks = output.get("masks")
    binary = (masks[:, 0] > MASK_THRESHOLD).cpu().numpy() if masks is not None else None
    results = []
    for i in range(len(scores)):
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        result = {
            "image_id": int(image_id),
            "category_id": int(category_ids[int(labels[i]) - 1]),
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "score": float(scores[i]),
        }
        if binary is not None:
            result["segmentation"] = encode_mask(binary[i])
        results.append(result)
    return results


def _evaluate(coco_gt: COCO, results: list[dict], iou_type: str, image_ids: Sequence[int]) -> dict[str, float]:
    if not results:
        # COCO.loadRes cannot load an empty list; no detection means zero precision everywhere.
        return {name: 0.0 for name in _ALL_STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # COCOeval reports -1 where a category/area range has no ground truth; keep those as -1 in the full list.
    return {name: float(ev.stats[i]) for i, name in enumerate(_ALL_STAT_NAMES)}


def coco_evaluate(coco_gt: COCO, results: list[dict], image_ids: Sequence[int] | None = None,
                  iou_types: Sequence[str] = IOU_TYPES) -> dict[str, dict[str, float]]:
    """COCOeval per IoU type over `image_ids` (default: every image of coco_gt) -> {type: {AP, AP50, ..., ARl}}."""
    ids = sorted(coco_gt.getImgIds()) if image_ids is None else list(image_ids)
    out = {}
    for iou_type in iou_types:
        # As Detectron2's COCOEvaluator: box results carry no mask; mask results carry no box, so loadRes takes
        # area and box from the mask. Copies, because loadRes writes id/area/iscrowd into the dicts.
        drop = "segmentation" if iou_type == "bbox" else "bbox"
        typed = [{k: v for k, v in r.items() if k != drop}
                 for r in results if iou_type == "bbox" or "segmentation" in r]
        out[iou_type] = _evaluate(coco_gt, typed, iou_type, ids)
    return out


def headline(metrics: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Keep AP, AP50, AP75 per IoU type (the numbers in the paper's tables)."""
    return {t: {name: metrics[t][name] for name in _STAT_NAMES} for t in metrics}
