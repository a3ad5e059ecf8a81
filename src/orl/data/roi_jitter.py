"""ORL's intra-RoI box jitter (ORL_SPEC section 3): a randomly rescaled, reshaped and shifted copy of a kept box.

Up to `tries` candidates: area' = U(0.5, 2) x area, aspect' = exp(U(ln 0.5, ln 2)), w' = round(sqrt(area' aspect')),
h' = round(sqrt(area' / aspect')), centre shifted by U(-0.5, 0.5) x w and U(-0.5, 0.5) x h; the first candidate
inside the image with IoU > 0.5 against the box wins, else the box itself is returned. Boxes are (x, y, w, h)
integers in full-image pixels. The candidates are drawn all at once from the torch RNG (which the dataset seeds per
sample), so the RNG stream consumed does not depend on which candidate is accepted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

SCALE = (0.5, 2.0)
ASPECT = (0.5, 2.0)
SHIFT = (-0.5, 0.5)
IOU_THRESHOLD = 0.5
TRIES = 200


def box_iou(a: Sequence[float] | np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one (x, y, w, h) box `a` against each row of `b` (M, 4); returns (M,) float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[0] + a[2], b[:, 0] + b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[1] + a[3], b[:, 1] + b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = iw * ih
    union = a[2] * a[3] + b[:, 2] * b[:, 3] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def jitter_candidates(box: Sequence[int], u: np.ndarray) -> np.ndarray:
    """The candidate boxes (M, 4) int64 for uniform draws u (M, 4) in [0, 1): (area, aspect, dx, dy)."""
    x, y, w, h = (float(v) for v in box)
    u = np.asarray(u, dtype=np.float64).reshape(-1, 4)
    area = (SCALE[0] + (SCALE[1] - SCALE[0]) * u[:, 0]) * w * h
    lo, hi = math.log(ASPECT[0]), math.log(ASPECT[1])
    aspect = np.exp(lo + (hi - lo) * u[:, 1])
    # np.round is round-half-to-even, like Python's round() in the authors' code.
    w2 = np.round(np.sqrt(area * aspect))
    h2 = np.round(np.sqrt(area / aspect))
    cx = x + 0.5 * w + (SHIFT[0] + (SHIFT[1] - SHIFT[0]) * u[:, 2]) * w
    cy = y + 0.5 * h + (SHIFT[0] + (SHIFT[1] - SHIFT[0]) * u[:, 3]) * h
    x2 = np.round(cx - 0.5 * w2)
    y2 = np.round(cy - 0.5 * h2)
    return np.stack([x2, y2, w2, h2], axis=1).astype(np.int64)


def first_valid(box: Sequence[int], candidates: np.ndarray, img_w: int, img_h: int,
                iou_threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """The first candidate inside the image (and non-empty) with IoU > iou_threshold, else `box` itself."""
    c = candidates
    inside = (c[:, 0] >= 0) & (c[:, 1] >= 0) & (c[:, 0] + c[:, 2] <= img_w) & (c[:, 1] + c[:, 3] <= img_h)
    ok = inside & (c[:, 2] >= 1) & (c[:, 3] >= 1)
    ok[ok] = box_iou(box, c[ok]) > iou_threshold
    hits = np.flatnonzero(ok)
    return c[hits[0]].copy() if len(hits) else np.asarray(box, dtype=np.int64).copy()


def jitter_box(
    box: Sequence[int],
    img_w: int,
    img_h: int,
    tries: int = TRIES,
    iou_threshold: float = IOU_THRESHOLD,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """ORL's jittered copy b2 of box b1 = (x, y, w, h) in a img_w x img_h image, as int64 (4,)."""
    if tries <= 0:
        return np.asarray(box, dtype=np.int64).copy()
    # float64 draws: the sizes are rounded to integers, float32 steps would show at large boxes.
    u = torch.rand(tries, 4, generator=generator, dtype=torch.float64).numpy()
    return first_valid(box, jitter_candidates(box, u), img_w, img_h, iou_threshold)
