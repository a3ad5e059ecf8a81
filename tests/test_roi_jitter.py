"""ORL's intra-RoI jitter: every accepted box overlaps > 0.5, lies inside the image, has integer size; fallback."""

import math

import numpy as np
import pytest
import torch

from orl.data.roi_jitter import box_iou, first_valid, jitter_box, jitter_candidates


def test_box_iou():
    a = (0, 0, 10, 10)
    b = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [20, 20, 5, 5], [0, 0, 5, 10]])
    assert box_iou(a, b) == pytest.approx([1.0, 50 / 150, 0.0, 0.5])


@pytest.mark.parametrize("box,img", [((30, 20, 40, 60), (120, 100)), ((0, 0, 96, 96), (96, 200)),
                                     ((5, 7, 13, 9), (30, 20))])
def test_jitter_properties_over_many_draws(box, img):
    g = torch.Generator().manual_seed(0)
    w_img, h_img = img
    moved = 0
    for _ in range(300):
        b2 = jitter_box(box, w_img, h_img, generator=g)
        assert b2.dtype == np.int64 and b2.shape == (4,)
        x, y, w, h = b2.tolist()
        assert w >= 1 and h >= 1
        assert x >= 0 and y >= 0 and x + w <= w_img and y + h <= h_img
        assert box_iou(box, b2[None])[0] > 0.5
        moved += not np.array_equal(b2, box)
    assert moved > 250  # a real jitter, not the fallback


def test_candidates_follow_the_recipe():
    box = (100, 50, 40, 90)
    u = np.array([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    c = jitter_candidates(box, u)
    area = 40 * 90
    # u = 0: area' = 0.5 area, aspect' = 0.5, centre shifted by -w/2, -h/2.
    w0, h0 = round(math.sqrt(0.5 * area * 0.5)), round(math.sqrt(0.5 * area / 0.5))
    assert c[0].tolist() == [round(100 - w0 / 2), round(50 - h0 / 2), w0, h0]
    w1, h1 = round(math.sqrt(2 * area * 2)), round(math.sqrt(2 * area / 2))
    # u = 1: area' = 2 area, aspect' = 2, centre (120, 95) shifted by +w/2, +h/2.
    assert c[1].tolist() == [round(120 + 20 - w1 / 2), round(95 + 45 - h1 / 2), w1, h1]
    # u = 0.5: scale 1.25, aspect 1, no shift.
    w2 = round(math.sqrt(1.25 * area))
    assert c[2].tolist() == [round(120 - w2 / 2), round(95 - w2 / 2), w2, w2]


def test_first_valid_takes_the_first_acceptable_candidate():
    box = (10, 10, 20, 20)
    cands = np.array([[0, 0, 100, 100], [-1, 10, 20, 20], [12, 10, 20, 20], [10, 10, 20, 20]])
    assert first_valid(box, cands, 40, 40).tolist() == [12, 10, 20, 20]  # 1: IoU too low, 2: outside


def test_fallback_when_no_candidate_can_succeed():
    # A 500 x 100 box filling its image: a candidate inside has h' <= 100 and, with aspect' <= 2, w' <= 201
    # even after rounding, so its area is <= 20100 < half of 50000: IoU <= 0.41. Always the box itself.
    box = (0, 0, 500, 100)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert jitter_box(box, 500, 100, generator=g).tolist() == list(box)
    assert jitter_box(box, 500, 100, tries=0).tolist() == list(box)


def test_deterministic_from_the_seed_and_uses_the_global_rng():
    box = (30, 20, 40, 60)
    a = [jitter_box(box, 120, 100, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert np.array_equal(a[0], a[1])
    torch.manual_seed(3)
    b1 = [jitter_box(box, 120, 100) for _ in range(5)]
    torch.manual_seed(3)
    b2 = [jitter_box(box, 120, 100) for _ in range(5)]
    assert all(np.array_equal(x, y) for x, y in zip(b1, b2))
    assert len({tuple(x.tolist()) for x in b1}) > 1
