"""Golden parity with the authors' ORL code (github.com/Jiahao000/ORL, mmcv 1.0.3): orl against stored outputs.

The fixtures in tests/data/parity/ hold inputs and the authors' outputs, made by tests/data/parity/make_fixtures.py
(commits and command in tests/data/parity/README.md); no authors' code is needed here. docs/parity.md says what
each test compares and what parity does not cover.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp
from torch import nn

from orl.data.orl_dataset import ORLDataset
from orl.data.roi_jitter import first_valid, jitter_candidates
from orl.methods import build_method
from orl.methods.base import cosine_momentum, momentum_update
from orl.mining.box_filter import filter_boxes
from orl.mining.correspondence import mine_query, pair_boxes
from orl.mining.knn import knn
from orl.train.schedules import warmup_cosine_lr

DATA = Path(__file__).parent / "data" / "parity"


def _npz(name: str) -> dict[str, np.ndarray]:
    with np.load(DATA / name) as z:
        return dict(z)


def _json(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def _rows(values: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


# ---- kNN (tools/coco_knn_image_retrieval.ipynb: topk(keys + 1), then I[:, 1:])


@pytest.mark.parametrize("route", ["numpy", "torch"])
def test_knn_matches_notebook_on_distinct_features(route: str) -> None:
    z = _npz("knn.npz")
    idx, _ = knn(z["unique_features"], int(z["keys"]), route=route)
    np.testing.assert_array_equal(idx, z["unique_knn"])


def test_knn_drops_self_by_index_where_the_notebook_drops_a_twin() -> None:
    """With duplicate images the notebook's column-0 drop can keep the query itself; orl drops it by index."""
    z = _npz("knn.npz")
    k, feats, top = int(z["keys"]), z["dup_features"], z["dup_top"]
    idx, _ = knn(feats, k, route="numpy")
    rows = np.arange(len(feats))
    # Identical features are tied: compare up to the twin class (lowest index of each set of identical rows).
    cls = np.array([min(np.flatnonzero((feats == f).all(axis=1))) for f in feats])
    expected = np.stack([[j for j in t if j != i][:k] for i, t in enumerate(top)])
    np.testing.assert_array_equal(cls[idx], cls[expected])
    assert not (idx == rows[:, None]).any(), "orl never lists the query as its own neighbour"
    assert (z["dup_knn"] == rows[:, None]).any(), "the fixture shows the notebook listing a query as its own neighbour"


# ---- box filter (openselfsup/datasets/correspondence.py: box_filter)


def test_box_filter_matches_authors() -> None:
    z, cases = _npz("box_filter.npz"), _json("box_filter.json")["cases"]
    images = _rows(z["boxes"], z["box_offsets"])
    for c, p in enumerate(cases):
        want = _rows(z[f"case{c}_kept"], z[f"case{c}_offsets"])
        for i, (boxes, kept) in enumerate(zip(images, want)):
            got = filter_boxes(boxes, p["min_size"], p["max_ratio"], p["max_iou_thr"], p["topN"])
            np.testing.assert_array_equal(got, kept, err_msg=f"case {c} {p}, image {i}")


# ---- RoI pair selection (openselfsup/models/correspondence.py: Correspondence.forward_test)


def test_correspondence_pairs_match_authors() -> None:
    z, cases = _npz("correspondence.npz"), _json("correspondence.json")["cases"]
    for c, meta in enumerate(cases):
        k = len(meta["num_neighbour_boxes"])
        result = mine_query(z[f"case{c}_emb_q"], [z[f"case{c}_emb_k{j}"] for j in range(k)], meta["topk_bbox_ratio"])
        assert len(result) == k
        for j, (ids, _) in enumerate(result):
            got = pair_boxes(z[f"case{c}_box_q"], z[f"case{c}_box_k{j}"], ids)
            # same pairs, same order (highest cosine first), same count T = max(1, int(ratio * B_q))
            np.testing.assert_array_equal(got, z[f"case{c}_pairs{j}"], err_msg=f"case {c} {meta}, neighbour {j}")


# ---- ORL loss terms and weights (openselfsup/models/orl.py + heads/latent_pred_head.py)


def _linear(w: np.ndarray) -> nn.Linear:
    layer = nn.Linear(w.shape[1], w.shape[0], bias=False).double()
    layer.weight.data.copy_(torch.from_numpy(w))
    return layer


def test_orl_loss_terms_weights_and_gradients_match_authors() -> None:
    z, weights = _npz("orl_loss.npz"), _json("orl_loss.json")["weights"]
    method = build_method("orl", arch="resnet18", proj_hidden=8, proj_dim=8, pred_hidden=8,
                          w_global=weights["global"], w_intra=weights["intra"], w_inter=weights["inter"])
    # Same maps in, same linear projector / predictors / target as the fixture's authors' model.
    method.backbone, method.target_backbone = nn.Identity(), nn.Identity()
    method.projector, method.target_projector = _linear(z["proj"]), _linear(z["target_proj"])
    method.target_projector.weight.requires_grad_(False)
    method.predictor, method.intra_predictor, method.inter_predictor = (
        _linear(z[f"pred_{t}"]) for t in ("global", "intra", "inter"))
    batch = {k: torch.from_numpy(z[f"in_{k}"]) for k in ("view1", "view2", "intra1", "intra2", "inter1", "inter2")}
    out = method(batch)
    for term, key in (("global", "loss_global"), ("intra", "loss_local_intra"), ("inter", "loss_local_inter")):
        # orl logs each term unweighted; the authors' dict holds weight x term
        assert weights[term] * out[f"loss_{term}"].item() == pytest.approx(float(z[key]), rel=1e-5), term
    assert out["loss"].item() == pytest.approx(float(z["loss_global"] + z["loss_local_intra"] + z["loss_local_inter"]),
                                               rel=1e-5)
    out["loss"].backward()
    np.testing.assert_allclose(method.projector.weight.grad.numpy(), z["grad_proj"], rtol=1e-4, atol=1e-7)
    for term, mod in (("global", method.predictor), ("intra", method.intra_predictor),
                      ("inter", method.inter_predictor)):
        np.testing.assert_allclose(mod.weight.grad.numpy(), z[f"grad_pred_{term}"], rtol=1e-4, atol=1e-7,
                                   err_msg=term)


# ---- RoI jitter and sampling (openselfsup/datasets/orl.py: aug_bbox, ORLDataset.__getitem__; COCOORLJson)


def test_jitter_matches_aug_bbox_on_the_same_random_stream() -> None:
    """aug_bbox's random() stream, 4 per try (area, ratio, dx, dy), fed to orl's candidates gives the same box."""
    z = _npz("jitter_exact.npz")
    for seed, box, (img_w, img_h), want in zip(z["seeds"], z["boxes"], z["sizes"], z["results"]):
        rng = random.Random(int(seed))
        u = np.array([rng.random() for _ in range(4 * 200)]).reshape(200, 4)
        got = first_valid(box, jitter_candidates(box, u), int(img_w), int(img_h))
        np.testing.assert_array_equal(got, want, err_msg=f"seed {seed}, box {box}, image {img_w}x{img_h}")
    fallback = (z["results"] == z["boxes"]).all(axis=1).mean()
    assert 0.1 < fallback < 0.9, "the fixture exercises both accepted jitters and the fallback"


class _Reader:
    def __init__(self, intra: np.ndarray, pairs: list[np.ndarray]) -> None:
        self.intra, self.pair_rows = intra, pairs

    def boxes(self, i: int) -> np.ndarray:
        return self.intra

    def neighbors(self, i: int) -> np.ndarray:
        return np.array([1, 2, 3])

    def pairs(self, row: int) -> np.ndarray:
        return self.pair_rows[row]


def _orl_draws(z: dict[str, np.ndarray], n: int) -> np.ndarray:
    pairs = _rows(z["pairs"], z["pair_offsets"])
    ds = SimpleNamespace(reader=_Reader(z["intra"], pairs), k=len(pairs), jitter_tries=200)
    img_w, img_h = (int(v) for v in z["img_size"])
    torch.manual_seed(0)
    out = np.empty((n, 4, 4), dtype=np.int64)
    for s in range(n):
        d = ORLDataset.draw_rois(ds, 0, img_w, img_h)
        out[s] = [d.intra1, d.intra2, d.inter1, d.inter2]
    return out


def _freq(rows: np.ndarray, table: np.ndarray) -> np.ndarray:
    hits = (rows[:, None, :] == table[None, :, :]).all(axis=2)
    assert (hits.sum(axis=1) == 1).all()
    return hits.mean(axis=0)


def test_roi_sampling_distribution_matches_authors() -> None:
    """Box, neighbour and pair choice and the jitter's distribution against 6,000 draws of the authors' dataset."""
    z = _npz("roi_sampling.npz")
    theirs = z["crops"].astype(np.int64)
    n = len(theirs)
    ours = _orl_draws(z, n)
    # Which kept box is b1; which (neighbour, pair) is the inter pair: frequencies within 4.5 binomial sigmas.
    sizes = np.diff(z["pair_offsets"])
    choices = (  # (authors' rows, orl's rows, table, probability of each row)
        (theirs[:, 0], ours[:, 0], z["intra"], np.full(len(z["intra"]), 1.0 / len(z["intra"]))),
        (theirs[:, 2:].reshape(n, 8), ours[:, 2:].reshape(n, 8), z["pairs"],
         np.repeat(1.0 / (len(sizes) * sizes), sizes)),  # uniform neighbour, then uniform pair of that neighbour
    )
    for rows_a, rows_o, table, expected in choices:
        f_a, f_o = _freq(rows_a, table), _freq(rows_o, table)
        sigma = np.sqrt(expected * (1 - expected) / n)
        assert np.abs(f_a - expected).max() < 4.5 * sigma.max(), "authors' draws are uniform as documented"
        assert np.abs(f_o - f_a).max() < 4.5 * np.sqrt(2) * sigma.max(), (f_o, f_a)
    # Jitter of each kept box: same fallback rate and the same distribution of x, y, w, h (two-sample KS).
    for b, box in enumerate(z["intra"]):
        a = theirs[(theirs[:, 0] == box).all(axis=1), 1]
        o = ours[(ours[:, 0] == box).all(axis=1), 1]
        fb_a, fb_o = (a == box).all(axis=1).mean(), (o == box).all(axis=1).mean()
        assert abs(fb_a - fb_o) < 4.5 * math.sqrt(0.25 * (1 / len(a) + 1 / len(o))), (b, fb_a, fb_o)
        for coord in range(4):
            if np.ptp(a[:, coord]) == 0 and np.ptp(o[:, coord]) == 0:
                assert a[0, coord] == o[0, coord]
                continue
            p = ks_2samp(a[:, coord], o[:, coord]).pvalue
            assert p > 1e-3, f"box {box}: coordinate {coord} differs from the authors' jitter (KS p = {p:.2g})"


# ---- BYOL momentum (openselfsup/hooks/byol_hook.py) and the EMA step (ORL._momentum_update)


def test_momentum_schedule_matches_byol_hook() -> None:
    z = _npz("momentum.npz")
    total = int(z["max_iters"])
    # The hook sets m before iteration k (runner.iter = k, from 0) and updates after it; orl's trainer calls
    # after_step(k, total) after optimiser step k with cosine_momentum(k, total).
    ours = np.array([cosine_momentum(k, total, 0.99) for k in range(total)])
    np.testing.assert_allclose(ours, z["momentum"], rtol=0, atol=1e-15)


def test_ema_step_matches_authors() -> None:
    z = _npz("momentum.npz")
    target, online = nn.Linear(5, 3), nn.Linear(5, 3)
    for name in ("weight", "bias"):
        getattr(target, name).data.copy_(torch.from_numpy(z[f"target_before_{name}"]))
        getattr(online, name).data.copy_(torch.from_numpy(z[f"online_{name}"]))
    momentum_update(target, online, float(z["ema_momentum"]))
    for name in ("weight", "bias"):
        np.testing.assert_allclose(getattr(target, name).detach().numpy(), z[f"target_after_{name}"],
                                   rtol=1e-6, atol=1e-7)


# ---- learning rate (mmcv 1.0.3 CosineAnnealingLrUpdaterHook with ORL's lr_config)


@pytest.mark.parametrize("name", ["short", "paper"])
def test_lr_schedule_against_mmcv(name: str) -> None:
    """Warmup: identical ramp; mmcv multiplies it onto the per-EPOCH cosine. After warmup orl's per-iteration cosine
    over the remaining steps stays within the bound of that time shift (a known difference, docs/parity.md)."""
    z = _npz("lr.npz")
    epochs, epoch_len = (int(v) for v in z[f"{name}_shape"])
    peak, total = float(z["base_lr"]), epochs * epoch_len
    warmup = int(z["warmup_epochs"]) * epoch_len
    theirs = z[f"{name}_lr"]
    ours = np.array([warmup_cosine_lr(k, total, peak, warmup) for k in range(total)])
    epoch_cos = np.array([0.5 * (1 + math.cos(math.pi * (k // epoch_len) / epochs)) for k in range(total)])
    np.testing.assert_allclose(ours[:warmup] * epoch_cos[:warmup], theirs[:warmup], rtol=1e-12, atol=0)
    np.testing.assert_allclose(theirs[warmup:], peak * epoch_cos[warmup:], rtol=1e-12, atol=1e-15)
    bound = peak * math.pi / 2 * (warmup + epoch_len) / total
    assert np.abs(ours - theirs).max() <= bound
    assert ours[0] == pytest.approx(theirs[0]) and ours[-1] < theirs[-1] + 1e-12
