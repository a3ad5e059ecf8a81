"""How object-like the mined correspondence pairs are, against COCO ground truth (a diagnostic, beyond the paper).

A kept box "covers an object" when its IoU with some non-crowd ground-truth box of its own image is >= 0.5; its
matched object is the ground-truth box of highest IoU (>= 0.5). For the mined pairs we report the fraction whose
two boxes both cover an object, and the fraction whose two matched objects share a category. The baseline draws
the same number of random pairs (seeded, uniform over B_q x B_k) from the same kept boxes of the same (q, k) image
pairs, and also gives the exact expectation of that draw; so mined vs random isolates what the similarity ranking
adds on top of the proposals and the kNN.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from orl.artifacts import Csr
from orl.data.image_index import ImageIndex
from orl.mining.box_filter import box_iou
from orl.mining.proposal_quality import usable_annotations

IOU_THRESHOLD = 0.5


def load_gt(annotations: str | os.PathLike, image_ids: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image (`image_ids` order): non-crowd, non-degenerate COCO boxes (G, 4) xywh float64 and categories (G,)."""
    per_image = {i: [(a["bbox"], int(a["category_id"])) for a in anns]
                 for i, anns in usable_annotations(annotations, image_ids).items()}
    out = []
    for i in image_ids:
        anns = per_image.get(int(i), [])
        out.append(
            (
                np.asarray([a[0] for a in anns], dtype=np.float64).reshape(-1, 4),
                np.asarray([a[1] for a in anns], dtype=np.int64),
            )
        )
    return out


def match_boxes(boxes: np.ndarray, gt_boxes: np.ndarray, iou_thresh: float = IOU_THRESHOLD) -> np.ndarray:
    """For each box, the index of the ground-truth box of highest IoU if that IoU >= iou_thresh, else -1."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    if len(boxes) == 0 or len(gt_boxes) == 0:
        return np.full(len(boxes), -1, dtype=np.int64)
    iou = box_iou(boxes, gt_boxes)
    best = iou.argmax(axis=1)  # first on ties
    return np.where(iou[np.arange(len(boxes)), best] >= iou_thresh, best, -1).astype(np.int64)


def _frac(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def _pair_stats(cat_q: np.ndarray, cat_k: np.ndarray) -> dict[str, float | None]:
    both = (cat_q >= 0) & (cat_k >= 0)
    same = both & (cat_q == cat_k)
    return {
        "both_cover_object": _frac(both.sum(), len(both)),
        "same_category": _frac(same.sum(), len(same)),
        "same_category_given_both": _frac(same.sum(), both.sum()),
    }


def pair_quality(
    boxes: Csr,
    neighbors: np.ndarray,
    pair_box_ids: Csr,
    gt: list[tuple[np.ndarray, np.ndarray]],
    seed: int = 0,
    iou_thresh: float = IOU_THRESHOLD,
) -> dict[str, Any]:
    """Object coverage and category agreement of mined pairs vs random pairs of the same (q, k) image pairs."""
    n, k = neighbors.shape
    if len(boxes) != n or len(gt) != n or len(pair_box_ids) != n * k:
        raise ValueError(
            f"{len(boxes)} box rows, {len(gt)} ground-truth rows, {len(pair_box_ids)} pair rows for N={n}, K={k}"
        )
    bl = boxes.lengths()
    off = boxes.offsets
    cats_all = np.unique(np.concatenate([c for _, c in gt])) if n else np.zeros(0, np.int64)
    # Category of each kept box's matched object (-1: covers none), and per-image histograms over categories.
    box_cat = np.full(len(boxes.values), -1, dtype=np.int64)
    hist = np.zeros((n, len(cats_all)), dtype=np.float64)
    gt_has = np.zeros((n, len(cats_all)), dtype=bool)
    for i in range(n):
        gtb, gtc = gt[i]
        m = match_boxes(boxes[i], gtb, iou_thresh)
        c = np.full(len(m), -1, dtype=np.int64)
        c[m >= 0] = np.searchsorted(cats_all, gtc[m[m >= 0]])
        box_cat[off[i] : off[i + 1]] = c
        np.add.at(hist[i], c[c >= 0], 1.0)
        gt_has[i, np.searchsorted(cats_all, gtc)] = True
    covering = hist.sum(axis=1)

    lens = pair_box_ids.lengths()
    rows = np.repeat(np.arange(n * k), lens)
    q, nb = rows // k, neighbors.ravel()[rows]
    ids = pair_box_ids.values.reshape(-1, 2).astype(np.int64)
    mined = _pair_stats(box_cat[off[q] + ids[:, 0]], box_cat[off[nb] + ids[:, 1]])

    rng = np.random.default_rng(seed)
    ra = rng.integers(0, bl[q]) if len(q) else np.zeros(0, np.int64)
    rb = rng.integers(0, bl[nb]) if len(q) else np.zeros(0, np.int64)
    random = _pair_stats(box_cat[off[q] + ra], box_cat[off[nb] + rb])

    # Exact expectation of the random draw: per (q, k) row, weighted by its number of pairs.
    rq, rk = np.arange(n * k) // k, neighbors.ravel()
    w = lens.astype(np.float64)
    both_exp = covering[rq] / bl[rq] * covering[rk] / bl[rk]
    same_exp = np.empty(n * k)
    for s in range(0, n * k, 65536):  # (rows x categories) temporaries in blocks
        e = min(s + 65536, n * k)
        same_exp[s:e] = (hist[rq[s:e]] * hist[rk[s:e]]).sum(axis=1) / (bl[rq[s:e]] * bl[rk[s:e]])
    expected = {
        "both_cover_object": _frac((w * both_exp).sum(), w.sum()),
        "same_category": _frac((w * same_exp).sum(), w.sum()),
        "same_category_given_both": _frac((w * same_exp).sum(), (w * both_exp).sum()),
    }
    share = (gt_has[rq] & gt_has[rk]).any(axis=1) if n * k else np.zeros(0, bool)
    lift = {
        key: (_frac(mined[key], expected[key]) if mined[key] is not None and expected[key] else None)
        for key in ("both_cover_object", "same_category")
    }
    return {
        "num_images": int(n),
        "k": int(k),
        "num_image_pairs": int(n * k),
        "num_pairs": int(len(ids)),
        "iou_threshold": iou_thresh,
        "seed": seed,
        "mean_kept_boxes": _frac(bl.sum(), n),
        "mean_pairs_per_image_pair": _frac(lens.sum(), n * k),
        "num_gt_objects": int(sum(len(c) for _, c in gt)),
        "kept_boxes_covering_object": _frac(covering.sum(), bl.sum()),
        "image_pairs_sharing_gt_category": _frac(share.sum(), len(share)),
        "mined": mined,
        "random": random,
        "random_expected": expected,
        "lift_over_random": lift,
    }


def index_pair_quality(
    boxes: Csr, neighbors: np.ndarray, pair_box_ids: Csr, index: ImageIndex, seed: int = 0
) -> dict[str, Any]:
    """pair_quality against the COCO annotations the index was built from."""
    if index.annotations is None:
        raise ValueError("the image index has no COCO annotations; pair quality needs ground truth")
    report = pair_quality(boxes, neighbors, pair_box_ids, load_gt(index.annotations, index.ids), seed=seed)
    report["annotations"] = str(index.annotations)
    return report
