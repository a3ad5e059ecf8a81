"""The §2d box filter: each rule, the greedy order dependence, the cap, the fallback box, and box_iou."""

from __future__ import annotations

import time

import numpy as np
import pytest

from orl.mining.box_filter import box_iou, filter_boxes, filter_mask


def _authors_filter(boxes, min_size=96, max_ratio=3.0, top_n=100, max_iou_thr=0.5):
    """The authors' loop (openselfsup/datasets/correspondence.py box_filter), as the reference."""
    proposal = []
    for box in boxes:
        w, h = box[2], box[3]
        if w < min_size or h < min_size:
            continue
        if w / h > max_ratio or h / w > max_ratio:
            continue
        if proposal:
            p = np.array(proposal, dtype=np.float64)
            ix = np.maximum(np.minimum(p[:, 0] + p[:, 2], box[0] + box[2]) - np.maximum(p[:, 0], box[0]), 0)
            iy = np.maximum(np.minimum(p[:, 1] + p[:, 3], box[1] + box[3]) - np.maximum(p[:, 1], box[1]), 0)
            inter = ix * iy
            iou = inter / (p[:, 2] * p[:, 3] + box[2] * box[3] - inter)
            if iou.max() > max_iou_thr:
                continue
        proposal.append(box)
    if not proposal:
        proposal.append(boxes[0])
    return np.array(proposal[:top_n]).reshape(-1, 4)


def test_box_iou_hand_computed():
    a = np.array([[0, 0, 10, 10], [0, 0, 4, 4]])
    b = np.array([[5, 5, 10, 10], [0, 0, 10, 10], [20, 20, 3, 3]])
    iou = box_iou(a, b)
    assert iou.shape == (2, 3)
    # [0,0,10,10] vs [5,5,10,10]: intersection 5x5 = 25, union 100 + 100 - 25 = 175
    assert iou[0, 0] == pytest.approx(25 / 175)
    assert iou[0, 1] == pytest.approx(1.0)
    assert iou[0, 2] == 0.0
    # [0,0,4,4] inside [0,0,10,10]: 16 / 100
    assert iou[1, 1] == pytest.approx(0.16)
    assert iou[1, 0] == 0.0  # [0,4) and [5,15) do not meet
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 3)
    assert box_iou(np.array([[1, 1, 0, 0]]), np.array([[1, 1, 0, 0]]))[0, 0] == 0.0  # degenerate: no NaN


def test_size_rule():
    boxes = np.array([[0, 0, 95, 200], [0, 0, 200, 95], [300, 300, 96, 96]])
    np.testing.assert_array_equal(filter_boxes(boxes), boxes[2:])
    np.testing.assert_array_equal(filter_boxes(boxes, min_size=90), boxes)  # IoU of [0] and [1] is 0.31


def test_aspect_rule():
    boxes = np.array([[0, 0, 96, 288], [500, 0, 96, 289], [0, 500, 289, 96], [500, 500, 288, 96]])
    np.testing.assert_array_equal(filter_boxes(boxes), boxes[[0, 3]])  # exactly 3.0 passes, above fails


def test_iou_rule_threshold_is_inclusive():
    # 120x100 boxes shifted by 40: intersection 80*100 = 8000, union 16000 -> IoU exactly 0.5: kept
    half = np.array([[0, 0, 120, 100], [40, 0, 120, 100]])
    assert box_iou(half[:1], half[1:])[0, 0] == 0.5
    np.testing.assert_array_equal(filter_boxes(half), half)
    more = np.array([[0, 0, 120, 100], [39, 0, 120, 100]])  # IoU 8100 / 15900 > 0.5: dropped
    np.testing.assert_array_equal(filter_boxes(more), more[:1])


def test_greedy_order_dependence():
    a = [0, 0, 100, 100]
    b = [30, 0, 100, 100]  # IoU(a, b) = 70/130 > 0.5
    c = [60, 0, 100, 100]  # IoU(b, c) > 0.5, IoU(a, c) = 40/160 <= 0.5
    # a first: b is dropped, and a dropped box suppresses nothing, so c survives
    np.testing.assert_array_equal(filter_boxes(np.array([a, b, c])), [a, c])
    # b first: it suppresses both others
    np.testing.assert_array_equal(filter_boxes(np.array([b, a, c])), [b])


def test_max_boxes_cap_keeps_the_first():
    boxes = np.array([[200 * i, 0, 100, 100] for i in range(150)])  # disjoint, all valid
    kept = filter_boxes(boxes)
    assert len(kept) == 100
    np.testing.assert_array_equal(kept, boxes[:100])
    np.testing.assert_array_equal(filter_boxes(boxes, max_boxes=7), boxes[:7])


def test_fallback_keeps_first_raw_box():
    boxes = np.array([[5, 6, 10, 20], [0, 0, 50, 50], [1, 1, 400, 20]])  # all too small or too elongated
    kept = filter_boxes(boxes)
    np.testing.assert_array_equal(kept, boxes[:1])
    np.testing.assert_array_equal(filter_mask(boxes), [0])


def test_zero_raw_boxes_give_zero_boxes():
    assert filter_boxes(np.zeros((0, 4), dtype=np.int32)).shape == (0, 4)
    assert filter_boxes(np.zeros(0, dtype=np.int32)).shape == (0, 4)


def test_matches_authors_loop_on_random_boxes():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(1, 400))
        xy = rng.integers(0, 500, (n, 2))
        wh = rng.integers(1, 400, (n, 2))
        boxes = np.concatenate([xy, wh], axis=1).astype(np.int32)
        min_size = [0.5, 50, 96, 150][trial % 4]
        got = filter_boxes(boxes, min_size=min_size, max_boxes=60)
        want = _authors_filter(boxes, min_size=min_size, top_n=60)
        np.testing.assert_array_equal(got, want)


def test_fast_enough_for_coco_sized_input():
    rng = np.random.default_rng(1)
    boxes = np.concatenate([rng.integers(0, 640, (2500, 2)), rng.integers(1, 640, (2500, 2))], axis=1)
    filter_boxes(boxes)  # warm-up
    t0 = time.perf_counter()
    for _ in range(5):
        filter_boxes(boxes)
    assert (time.perf_counter() - t0) / 5 < 0.25  # ~5 ms here; generous for a loaded CI machine


def test_rejects_bad_shapes_and_caps():
    with pytest.raises(ValueError):
        filter_boxes(np.zeros((3, 5)))
    with pytest.raises(ValueError):
        filter_boxes(np.zeros((3, 4)), max_boxes=0)
