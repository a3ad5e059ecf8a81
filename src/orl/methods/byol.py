"""BYOL (stage 1 of ORL): online backbone + projector + predictor regress an EMA target, symmetric loss summed."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from orl.data.augment import BYOL_VIEWS
from orl.methods.base import Method, Recipe, cosine_momentum, frozen_copy, momentum_update
from orl.methods.losses import symmetric_byol_loss
from orl.models.backbones import build_backbone, feature_dim, global_pool
from orl.models.heads import MLP


class BYOL(Method):
    """BYOL as specified in ORL_SPEC section 1 (the authors' OpenSelfSup recipe)."""

    name: ClassVar[str] = "byol"
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "sgd", "base_lr": 0.4, "base_batch": 512, "momentum": 0.9, "weight_decay": 1e-4,
    }
    # The asymmetric views (blur 1.0 / 0.1, solarize 0 / 0.2) and 4 warmup epochs of the authors' config.
    recipe: ClassVar[Recipe] = Recipe(views=BYOL_VIEWS, warmup_epochs=4.0)

    def __init__(
        self,
        arch: str = "resnet50",
        proj_hidden: int = 4096,
        proj_dim: int = 256,
        pred_hidden: int = 4096,
        base_momentum: float = 0.99,
    ) -> None:
        super().__init__()
        self.save_hparams(locals())
        self.backbone = build_backbone(arch)
        self.projector = MLP(feature_dim(arch), proj_hidden, proj_dim)
        self.predictor = MLP(proj_dim, pred_hidden, proj_dim)
        # Target = copy of backbone + projector at start, never trained by gradients, only by EMA.
        self.target_backbone = frozen_copy(self.backbone)
        self.target_projector = frozen_copy(self.projector)
        self.base_momentum = base_momentum
        self.momentum = base_momentum  # last value used by after_step, for logging

    def online(self, x: torch.Tensor) -> torch.Tensor:
        """Online projection z = projector(pool(backbone(x)))."""
        return self.embed(x)

    @torch.no_grad()
    def target(self, x: torch.Tensor) -> torch.Tensor:
        """Target projection, no gradient; runs in the module's mode (train: BN batch stats, as in OpenSelfSup)."""
        return self.target_projector(global_pool(self.target_backbone(x)))

    def pair_losses(
        self, x1: torch.Tensor, x2: torch.Tensor, predictor: nn.Module | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(D(pred(online(x1)), target(x2)), D(pred(online(x2)), target(x1))) for one pair of views.

        ORL reuses this with its own predictors for the global, intra-RoI and inter-RoI pairs. The two views go
        through the networks separately (not concatenated) so BN statistics are per view, as in OpenSelfSup.
        """
        predictor = self.predictor if predictor is None else predictor
        p1, p2 = predictor(self.online(x1)), predictor(self.online(x2))
        t1, t2 = self.target(x1), self.target(x2)
        return symmetric_byol_loss(p1, p2, t1, t2)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Symmetric BYOL loss: loss = loss_12 + loss_21 (summed, range 0..8)."""
        loss_12, loss_21 = self.pair_losses(batch["view1"], batch["view2"])
        return {"loss": loss_12 + loss_21, "loss_12": loss_12, "loss_21": loss_21}

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """EMA of the target with m_k = cosine_momentum(k, K, base_momentum), over parameters only."""
        self.momentum = cosine_momentum(step, total_steps, self.base_momentum)
        momentum_update(self.target_backbone, self.backbone, self.momentum)
        momentum_update(self.target_projector, self.projector, self.momentum)
