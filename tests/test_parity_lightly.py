"""Golden parity with lightly (a peer implementation) for the image-level methods, on identical weights and tensors.

Runs where lightly is installed (the `peer` extra, which `make test` and CI install); skipped otherwise.
docs/parity.md says what each test compares.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

lightly_loss = pytest.importorskip("lightly.loss")
lightly_utils = pytest.importorskip("lightly.models.utils")

from orl.methods import build_method  # noqa: E402
from orl.methods.base import momentum_update  # noqa: E402
from orl.methods.losses import infonce_loss, nt_xent_loss  # noqa: E402


def _grads(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in module.parameters() if p.grad is not None]


def test_byol_loss_is_affine_in_lightly_negative_cosine_and_gradients_proportional() -> None:
    """orl: sum over both directions of 2 - 2 cos (mean over batch); lightly's BYOL: mean of -cos over both.

    So orl = 4 + 4 x lightly exactly, and every gradient of orl is 4 x lightly's.
    """
    torch.manual_seed(0)
    method = build_method("byol", arch="resnet18", proj_hidden=32, proj_dim=16, pred_hidden=32)
    x1, x2 = torch.randn(6, 3, 32, 32), torch.randn(6, 3, 32, 32)
    # Identical weights: both losses use this method's online and target networks on the same views (train-mode BN
    # uses batch statistics, so the second forward sees exactly the first one's outputs).
    out = method({"view1": x1, "view2": x2})
    out["loss"].backward()
    g_orl = _grads(method)
    method.zero_grad()

    crit = lightly_loss.NegativeCosineSimilarity()
    p1, p2 = method.predictor(method.online(x1)), method.predictor(method.online(x2))
    t1, t2 = method.target(x1), method.target(x2)
    peer = 0.5 * (crit(p1, t2) + crit(p2, t1))
    peer.backward()
    g_peer = _grads(method)

    assert out["loss"].item() == pytest.approx(4.0 + 4.0 * peer.item(), rel=1e-6, abs=1e-6)
    assert len(g_orl) == len(g_peer) > 0
    for a, b in zip(g_orl, g_peer):
        torch.testing.assert_close(a, 4.0 * b, rtol=1e-4, atol=1e-6)


def test_moco_infonce_with_queue_matches_lightly_memory_bank() -> None:
    """InfoNCE of MoCo v2 (T = 0.2, negatives from the queue) = lightly NTXentLoss with a memory bank, same bank."""
    torch.manual_seed(1)
    n, d, size = 8, 16, 32
    # Gradients w.r.t. the unnormalised query embedding: orl normalises it before the loss (MoCoV2.forward),
    # lightly inside the loss.
    e = torch.randn(n, d, requires_grad=True)
    k = F.normalize(torch.randn(n, d), dim=1)
    queue = F.normalize(torch.randn(size, d), dim=1)

    ours = infonce_loss(F.normalize(e, dim=1), k, queue.clone(), temperature=0.2)
    (g_ours,) = torch.autograd.grad(ours, e)

    crit = lightly_loss.NTXentLoss(temperature=0.2, memory_bank_size=(size, d))
    crit.memory_bank.bank.copy_(queue)
    crit.memory_bank.bank_ptr.zero_()
    peer = crit(e, k)
    (g_peer,) = torch.autograd.grad(peer, e)

    assert ours.item() == pytest.approx(peer.item(), rel=1e-6)
    torch.testing.assert_close(g_ours, g_peer, rtol=1e-5, atol=1e-7)

    # Both write the batch's keys into the queue at the pointer (lightly updates because q requires grad).
    method = build_method("moco_v2", arch="resnet18", proj_hidden=32, proj_dim=d, queue_size=size)
    method.queue.copy_(queue)
    method.enqueue(k)
    # lightly renormalises the (already unit) keys: equal up to float32 rounding
    torch.testing.assert_close(method.queue, crit.memory_bank.bank, rtol=0, atol=1e-6)
    assert int(method.queue_ptr) == int(crit.memory_bank.bank_ptr) == n


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_simclr_nt_xent_matches_lightly(temperature: float) -> None:
    """NT-Xent over 2N views, self excluded, positive = the other view: loss and gradients equal lightly's."""
    torch.manual_seed(2)
    z1, z2 = torch.randn(10, 12, requires_grad=True), torch.randn(10, 12, requires_grad=True)
    ours = nt_xent_loss(z1, z2, temperature)
    g_ours = torch.autograd.grad(ours, (z1, z2))
    peer = lightly_loss.NTXentLoss(temperature=temperature)(z1, z2)
    g_peer = torch.autograd.grad(peer, (z1, z2))
    assert ours.item() == pytest.approx(peer.item(), rel=1e-6)
    for a, b in zip(g_ours, g_peer):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_ema_update_matches_lightly_update_momentum() -> None:
    """theta_t <- m theta_t + (1 - m) theta_o over parameters; BN running statistics are left alone by both."""
    torch.manual_seed(3)
    online = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 4))
    ours, peer = copy.deepcopy(online), copy.deepcopy(online)
    online(torch.randn(8, 6))  # the online BN running stats move away from the targets'; neither update may copy them
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    for m in (0.99, 0.9, 0.5):
        momentum_update(ours, online, m)
        lightly_utils.update_momentum(online, peer, m)
        for (name, a), b in zip(ours.state_dict().items(), peer.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=f"{name} after m = {m}")
