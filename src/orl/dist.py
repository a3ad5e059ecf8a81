"""Tiny torch.distributed helpers (below methods and train, which both use them); each is a no-op in one process."""

from __future__ import annotations

import torch
import torch.distributed as tdist


def is_distributed() -> bool:
    """True when a torch.distributed process group is initialised."""
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return tdist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return tdist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process)."""
    return rank() == 0


@torch.no_grad()
def gather_no_grad(t: torch.Tensor) -> torch.Tensor:
    """all_gather `t` from every rank and concatenate along dim 0 (rank order); no gradient."""
    if not is_distributed():
        return t
    t = t.contiguous()
    out = [torch.empty_like(t) for _ in range(world_size())]
    tdist.all_gather(out, t)
    return torch.cat(out, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns to each rank the gradient of its own slice, summed over all ranks."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        t = t.contiguous()
        out = [torch.empty_like(t) for _ in range(tdist.get_world_size())]
        tdist.all_gather(out, t)
        ctx.n = t.shape[0]
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # Every rank's loss may use this rank's rows (e.g. as negatives), so their gradients are summed before
        # keeping the local slice. DDP then averages parameter gradients over ranks, which (for a loss that is a
        # mean over the ranks' local terms) gives exactly the single-process gradient of the global loss.
        # Dropping the all_reduce (OpenSelfSup's GatherLayer) loses the other ranks' negative terms.
        grad = grad.contiguous()
        tdist.all_reduce(grad)
        r = tdist.get_rank()
        return grad[r * ctx.n : (r + 1) * ctx.n]


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """all_gather `t` along dim 0 keeping the autograd path to the local slice (identity when not distributed)."""
    if not is_distributed():
        return t
    return _GatherWithGrad.apply(t)


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Broadcast `t` in place from rank `src` and return it (identity when not distributed)."""
    if is_distributed():
        tdist.broadcast(t, src)
    return t
