"""The stage-2d box filter (ORL_SPEC §2d) and IoU of (x, y, w, h) boxes.

The filter walks the raw proposals in their stored order: size, then aspect ratio, then a greedy overlap test
against the boxes kept so far, stopping at `max_boxes`. Because the overlap test is greedy the result depends on the
proposal order, which is why stage 2c makes that order reproducible.
"""

from __future__ import annotations

import numpy as np

__all__ = ["box_iou", "filter_boxes", "filter_mask", "size_aspect_mask"]


def _as_boxes(boxes: np.ndarray) -> np.ndarray:
    arr = np.asarray(boxes)
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (B, 4) as (x, y, w, h), got {arr.shape}")
    return arr


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of (x, y, w, h) boxes; continuous extents (area = w * h), as the authors' code."""
    a = _as_boxes(a).astype(np.float64)
    b = _as_boxes(b).astype(np.float64)
    ax0, ay0 = a[:, 0:1], a[:, 1:2]
    ax1, ay1 = ax0 + a[:, 2:3], ay0 + a[:, 3:4]
    bx0, by0 = b[:, 0], b[:, 1]
    bx1, by1 = bx0 + b[:, 2], by0 + b[:, 3]
    iw = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0.0, None)
    ih = np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0.0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    # Two degenerate (zero-area) boxes have union 0: call that no overlap rather than dividing by zero.
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou


def size_aspect_mask(boxes: np.ndarray, min_size: float, max_aspect: float) -> np.ndarray:
    """Per box, whether it passes the §2d size and aspect tests: both sides >= min_size, long / short <= max_aspect."""
    boxes = _as_boxes(boxes)
    w = boxes[:, 2].astype(np.float64)
    h = boxes[:, 3].astype(np.float64)
    # Zero-sized boxes (only possible with min_size <= 0) have an infinite aspect ratio: rejected.
    with np.errstate(divide="ignore", invalid="ignore"):
        aspect = np.maximum(w / h, h / w)
    return (w >= min_size) & (h >= min_size) & np.isfinite(aspect) & (aspect <= max_aspect)


def filter_mask(
    boxes: np.ndarray,
    min_size: float = 96,
    max_aspect: float = 3.0,
    iou_thresh: float = 0.5,
    max_boxes: int = 100,
) -> np.ndarray:
    """Indices (into `boxes`, ascending) of the boxes the §2d filter keeps, fallback included."""
    boxes = _as_boxes(boxes)
    if max_boxes < 1:
        raise ValueError(f"max_boxes must be at least 1, got {max_boxes}")
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    cand = np.flatnonzero(size_aspect_mask(boxes, min_size, max_aspect))

    kept: list[int] = []
    if len(cand):
        c = boxes[cand].astype(np.float64)
        x0, y0 = c[:, 0], c[:, 1]
        x1, y1 = x0 + c[:, 2], y0 + c[:, 3]
        area = c[:, 2] * c[:, 3]
        alive = np.ones(len(cand), dtype=bool)
        pos = 0
        # One vectorised IoU row per kept box (<= max_boxes rows), not one Python step per candidate: a candidate
        # is kept iff no earlier kept box overlaps it by more than iou_thresh, which is exactly greedy NMS in
        # proposal order. Candidates have w, h > 0 (finite aspect), so the union is never zero.
        while len(kept) < max_boxes:
            rest = np.flatnonzero(alive[pos:])
            if len(rest) == 0:
                break
            pos += int(rest[0])
            kept.append(pos)
            nxt = slice(pos + 1, None)
            iw = np.minimum(x1[nxt], x1[pos]) - np.maximum(x0[nxt], x0[pos])
            ih = np.minimum(y1[nxt], y1[pos]) - np.maximum(y0[nxt], y0[pos])
            inter = np.clip(iw, 0.0, None) * np.clip(ih, 0.0, None)
            # divide (rather than compare inter with thresh * union) to round exactly like the authors' code
            alive[nxt] &= inter / (area[nxt] + area[pos] - inter) <= iou_thresh
            pos += 1
    if not kept:
        return np.zeros(1, dtype=np.int64)  # every image keeps at least its first raw box (authors' fallback)
    return cand[np.asarray(kept, dtype=np.int64)]


def filter_boxes(
    boxes: np.ndarray,
    min_size: float = 96,
    max_aspect: float = 3.0,
    iou_thresh: float = 0.5,
    max_boxes: int = 100,
) -> np.ndarray:
    """Apply the §2d filter to one image's raw (x, y, w, h) boxes, in proposal order."""
    boxes = _as_boxes(boxes)
    return boxes[filter_mask(boxes, min_size, max_aspect, iou_thresh, max_boxes)]
