"""Losses, the BYOL momentum schedule and LARS on hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from orl.methods.base import cosine_momentum
from orl.methods.losses import byol_loss, infonce_loss, nt_xent_loss, symmetric_byol_loss
from orl.train.lars import LARS


def test_byol_loss_hand_values():
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    z = torch.tensor([[0.0, 1.0], [-2.0, 0.0], [0.3, 0.4]])  # cos 0, -1, 1 -> D = 2, 4, 0 (scale-invariant)
    assert byol_loss(p, z).item() == pytest.approx((2 + 4 + 0) / 3)


def test_symmetric_byol_terms_are_summed_range_0_to_8():
    t1, t2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    l12, l21 = symmetric_byol_loss(-t2, -t1, t1, t2)  # each prediction opposite to its target: worst case
    assert l12.item() == pytest.approx(4.0) and l21.item() == pytest.approx(4.0)
    assert (l12 + l21).item() == pytest.approx(8.0)
    l12, l21 = symmetric_byol_loss(t2, t1, t1, t2)  # perfect predictions
    assert (l12 + l21).item() == pytest.approx(0.0, abs=1e-6)
    # Direction 1->2 compares p1 with t2 (not t1).
    l12, l21 = symmetric_byol_loss(t2, -t1, t1, t2)
    assert (l12.item(), l21.item()) == pytest.approx((0.0, 4.0), abs=1e-6)


def _nt_xent_numpy(z1: np.ndarray, z2: np.ndarray, t: float) -> float:
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    total = 0.0
    for a in range(2 * n):
        pos = a + n if a < n else a - n
        sims = {j: float(z[a] @ z[j]) / t for j in range(2 * n) if j != a}
        total += -sims[pos] + math.log(sum(math.exp(s) for s in sims.values()))
    return total / (2 * n)


def test_nt_xent_hand_case():
    e = torch.eye(2)  # two images, both views identical and orthogonal across images
    expected = math.log(1 + 2 * math.exp(-10.0))  # -log(e^10 / (e^10 + e^0 + e^0)) at T = 0.1
    assert nt_xent_loss(e, e.clone(), 0.1).item() == pytest.approx(expected, abs=1e-6)


def test_nt_xent_matches_numpy():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    ref = _nt_xent_numpy(z1.numpy(), z2.numpy(), 0.1)
    assert nt_xent_loss(z1, z2, 0.1).item() == pytest.approx(ref, rel=1e-5)


def test_infonce_hand_case():
    q, k = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])  # logits at T 0.2: [5, 0, -5]
    expected = -5.0 + math.log(math.exp(5) + 1 + math.exp(-5))
    assert infonce_loss(q, k, queue, 0.2).item() == pytest.approx(expected, abs=1e-6)


def test_infonce_matches_numpy():
    g = torch.Generator().manual_seed(1)
    norm = lambda x: x / x.norm(dim=1, keepdim=True)  # noqa: E731
    q, k = norm(torch.randn(4, 6, generator=g)), norm(torch.randn(4, 6, generator=g))
    queue = norm(torch.randn(7, 6, generator=g))
    qn, kn, Q = q.double().numpy(), k.double().numpy(), queue.double().numpy()
    ref = 0.0
    for i in range(4):
        logits = np.concatenate([[qn[i] @ kn[i]], Q @ qn[i]]) / 0.2
        ref += -logits[0] + np.log(np.exp(logits).sum())
    assert infonce_loss(q, k, queue, 0.2).item() == pytest.approx(ref / 4, rel=1e-5)


def test_byol_momentum_schedule():
    assert cosine_momentum(0, 1000, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(500, 1000, 0.99) == pytest.approx(0.995)
    assert cosine_momentum(1000, 1000, 0.99) == pytest.approx(1.0)
    ms = [cosine_momentum(k, 100) for k in range(101)]
    assert all(a <= b for a, b in zip(ms, ms[1:]))  # monotone 0.99 -> 1


def test_lars_trust_ratio_hand_case():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0, 2.0]))  # 1-D: bias/BN, excluded
    opt = LARS([w, b], lr=2.0, momentum=0.9, weight_decay=0.0, trust_coefficient=0.001)
    w.grad = torch.tensor([[0.6, 0.8]])  # ||g|| = 1 -> trust ratio 0.001 * 5 / 1 = 0.005
    b.grad = torch.tensor([0.5, 0.5])
    opt.step()
    assert torch.allclose(w, torch.tensor([[3.0, 4.0]]) - 2.0 * 0.005 * torch.tensor([[0.6, 0.8]]))
    assert torch.allclose(b, torch.tensor([1.0, 2.0]) - 2.0 * torch.tensor([0.5, 0.5]))  # plain SGD step
    # Second step: momentum accumulates the lr-scaled update v = 0.9 v + lr_scaled g.
    w_before = w.detach().clone()
    w.grad = torch.tensor([[0.6, 0.8]])
    opt.step()
    ratio = 0.001 * w_before.norm() / 1.0
    v = 0.9 * (2.0 * 0.005 * torch.tensor([[0.6, 0.8]])) + 2.0 * ratio * torch.tensor([[0.6, 0.8]])
    assert torch.allclose(w, w_before - v, atol=1e-6)


def test_lars_weight_decay_only_on_weights():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([w, b], lr=1.0, momentum=0.0, weight_decay=0.1, trust_coefficient=0.01)
    w.grad = torch.tensor([[0.0, 0.0]])  # g' = wd w = [0.3, 0.4], ||g'|| = 0.5 -> ratio 0.01 * 5 / 0.5 = 0.1
    b.grad = torch.tensor([0.0])
    opt.step()
    assert torch.allclose(w, torch.tensor([[3.0, 4.0]]) - 0.1 * torch.tensor([[0.3, 0.4]]))
    assert torch.equal(b.detach(), torch.tensor([1.0]))  # no decay on biases / BN


def test_lars_zero_norm_falls_back_to_ratio_one():
    w = torch.nn.Parameter(torch.zeros(2, 2))
    opt = LARS([w], lr=0.5, momentum=0.0, weight_decay=0.0)
    w.grad = torch.ones(2, 2)
    opt.step()
    assert torch.allclose(w, torch.full((2, 2), -0.5))
