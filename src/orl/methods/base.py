"""The Method interface shared by every self-supervised method, and the momentum (EMA) helpers."""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from orl.data.augment import ViewRecipe
from orl.models.backbones import global_pool


@dataclass(frozen=True)
class Recipe:
    """A method's training recipe besides its optimiser (Method.default_optim): views, warmup, BatchNorm mode."""

    views: tuple[ViewRecipe, ViewRecipe]  # augmentation of view 1 and view 2 (ORL: also its RoI patches)
    warmup_epochs: float  # linear warmup; an explicit pretrain.warmup_epochs / --warmup-epochs replaces it
    sync_bn: bool = True  # GPU DDP: SyncBN; False: per-GPU BN (MoCo v2, which shuffles the key batch instead)


def cosine_momentum(step: int, total_steps: int, base: float = 0.99) -> float:
    """BYOL's schedule m_k = 1 - (1 - base) (cos(pi k / K) + 1) / 2: base at k = 0, 1 at k = K."""
    if total_steps <= 0:
        return base
    k = min(max(step, 0), total_steps)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * k / total_steps) + 1.0) / 2.0


@torch.no_grad()
def momentum_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """theta_t <- m theta_t + (1 - m) theta_o over PARAMETERS only; buffers (BN running stats) are left alone."""
    t_named, o_named = list(target.named_parameters()), list(online.named_parameters())
    if [n for n, _ in t_named] != [n for n, _ in o_named]:
        raise ValueError("target and online modules have different parameters")
    if momentum >= 1.0:
        return
    t_params = [p for _, p in t_named]
    o_params = [p.detach().to(dtype=t.dtype) for (_, p), t in zip(o_named, t_params)]
    # lerp(t, o, 1 - m) = m t + (1 - m) o, fused over all tensors.
    torch._foreach_lerp_(t_params, o_params, 1.0 - momentum)


def frozen_copy(module: nn.Module) -> nn.Module:
    """Deep copy of `module` with requires_grad False (an EMA target / key encoder)."""
    clone = copy.deepcopy(module)
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


class Method(nn.Module):
    """Base of the self-supervised methods: online backbone + projector, loss in forward, update after each step."""

    name: ClassVar[str]
    # Optimiser defaults from ORL_SPEC; the trainer scales base_lr by global_batch / base_batch.
    default_optim: ClassVar[dict[str, Any]]
    recipe: ClassVar[Recipe]

    backbone: nn.Module
    projector: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self._hparams: dict[str, Any] = {}

    def save_hparams(self, frame_locals: dict[str, Any]) -> None:
        """Record the constructor arguments (call with locals() at the top of the subclass __init__)."""
        sig = inspect.signature(type(self).__init__)
        skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        names = [n for n, p in sig.parameters.items() if n != "self" and p.kind not in skip]
        # A subclass's __init__ (e.g. ORL over BYOL) calls this again with its own locals and replaces the record.
        self._hparams = {n: frame_locals[n] for n in names if n in frame_locals}

    def hparams(self) -> dict[str, Any]:
        """Constructor kwargs, so that build_method(name, **hparams) rebuilds the same architecture."""
        return dict(self._hparams)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return {"loss": total, plus each loss term} for a batch with "view1" and "view2"."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward")

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """Called by the trainer after optimiser step `step` (from 0) of `total_steps`; default: nothing."""

    def online_backbone(self) -> nn.Module:
        """The online backbone (res5 map), the network later stages load and export; never an EMA copy."""
        return self.backbone

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Online backbone -> global average pool -> projector, unnormalised (N, proj_dim)."""
        return self.projector(global_pool(self.backbone(x)))
