"""Losses of BYOL (and ORL), MoCo v2 and SimCLR; all computed in IEEE float32 even under autocast or TF32."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from orl import dist
from orl.precision import ieee_fp32


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's D(p, z) = 2 - 2 cos(p, z), averaged over the batch (range 0..4)."""
    # Under bf16 autocast the cosine would be computed in bf16; the loss is tiny in cost, so force fp32.
    with torch.autocast(device_type=p.device.type, enabled=False):
        p = F.normalize(p.float(), dim=1)
        z = F.normalize(z.float(), dim=1)
        return (2 - 2 * (p * z).sum(dim=1)).mean()


def symmetric_byol_loss(
    p1: torch.Tensor, p2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two BYOL directions (D(p1, t2), D(p2, t1)); the total loss is their SUM (range 0..8), not the mean."""
    return byol_loss(p1, t2), byol_loss(p2, t1)


def infonce_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """MoCo InfoNCE: L2-normalised queries q (N, D), positive keys k (N, D), negatives queue (K, D); mean over N."""
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, queue = q.float(), k.float(), queue.float()
        l_pos = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
        with ieee_fp32():  # the trainer allows TF32 for the backbone; logits / 0.2 would amplify its error
            l_neg = q @ queue.t()  # (N, K)
        logits = torch.cat([l_pos, l_neg], dim=1) / temperature
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)  # the positive is column 0
        return F.cross_entropy(logits, labels)


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR NT-Xent over the 2N views of the GLOBAL batch; z1[i], z2[i] are the two views of local image i.

    Each rank scores its own 2n anchors against all 2N gathered views (self excluded, positive = the other view)
    and averages over its anchors; with gather_with_grad and DDP gradient averaging this equals the
    single-process loss over the global batch. Inputs need not be normalised.
    """
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z1 = F.normalize(z1.float(), dim=1)
        z2 = F.normalize(z2.float(), dim=1)
        n = z1.shape[0]
        all1, all2 = dist.gather_with_grad(z1), dist.gather_with_grad(z2)  # (M, D) each, rank order
        m = all1.shape[0]
        keys = torch.cat([all1, all2], dim=0)  # global view j of image i sits at i (view 1) or M + i (view 2)
        anchors = torch.cat([z1, z2], dim=0)  # (2n, D)
        with ieee_fp32():  # the trainer allows TF32 for the backbone; not for the logits
            logits = anchors @ keys.t() / temperature  # (2n, 2M)
        idx = torch.arange(n, device=z1.device) + dist.rank() * n  # global index of the local images
        self_idx = torch.cat([idx, idx + m])
        pos_idx = torch.cat([idx + m, idx])
        rows = torch.arange(2 * n, device=z1.device)
        mask = torch.zeros_like(logits, dtype=torch.bool)
        mask[rows, self_idx] = True
        logits = logits.masked_fill(mask, float("-inf"))  # an anchor is never its own negative
        return F.cross_entropy(logits, pos_idx)
