"""SimCLR baseline: NT-Xent over the 2N views of the global batch."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from orl.data.augment import ViewRecipe
from orl.methods.base import Method, Recipe
from orl.methods.losses import nt_xent_loss
from orl.models.backbones import build_backbone, feature_dim
from orl.models.heads import SimCLRHead

# SimCLR paper, ImageNet recipe at colour strength 1.0 (the authors' COCO config): crop scale 0.08-1, flip,
# ColorJitter(0.8, 0.8, 0.8, 0.2) p 0.8, grayscale 0.2, blur sigma 0.1-2 p 0.5, no solarize; both views alike.
SIMCLR_VIEW = ViewRecipe(crop_scale=(0.08, 1.0), jitter=(0.8, 0.8, 0.8, 0.2), jitter_p=0.8, grayscale_p=0.2,
                         blur_p=0.5, solarize_p=0.0)


class SimCLR(Method):
    """SimCLR (Chen et al. 2020) with the ORL supplementary's settings (LARS, lr 0.3 x batch / 256, T 0.1).

    LARS skips weight decay and the trust ratio on biases and BN parameters (orl.train.lars); 10 warmup epochs.
    """

    name: ClassVar[str] = "simclr"
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "lars", "base_lr": 0.3, "base_batch": 256, "momentum": 0.9, "weight_decay": 1e-6,
        "exclude_bias_and_bn": True,
    }
    recipe: ClassVar[Recipe] = Recipe(views=(SIMCLR_VIEW, SIMCLR_VIEW), warmup_epochs=10.0)

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
