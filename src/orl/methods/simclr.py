"""SimCLR baseline: NT-Xent over the 2N views of the global batch."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from orl.methods.base import Method
from orl.methods.losses import nt_xent_loss
from orl.models.backbones import build_backbone, feature_dim
from orl.models.heads import SimCLRHead


class SimCLR(Method):
    """SimCLR (Chen et al. 2020) with the ORL supplementary's settings (LARS, lr 0.3 x batch / 256, T 0.1)."""

    name: ClassVar[str] = "simclr"
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "lars", "base_lr": 0.3, "base_batch": 256, "momentum": 0.9, "weight_decay": 1e-6,
    }

    def __init__(
        self, arch: str = "resnet50", proj_hidden: int = 2048, proj_dim: int = 128, temperature: float = 0.1
    ) -> None:
        super().__init__()
        self.save_hparams(locals())
        self.backbone = build_backbone(arch)
        self.projector = SimCLRHead(feature_dim(arch), proj_hidden, proj_dim)
        self.temperature = temperature

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """NT-Xent loss; both views go through the network as one batch (shared BN statistics, as in SimCLR)."""
        v1, v2 = batch["view1"], batch["view2"]
        z1, z2 = self.embed(torch.cat([v1, v2], dim=0)).split([v1.shape[0], v2.shape[0]], dim=0)
        loss = nt_xent_loss(z1, z2, self.temperature)
        return {"loss": loss, "loss_ntxent": loss}
