"""Linear classification on a frozen backbone, as ORL's configs/benchmarks/linear_classification/*/r50_multihead_*.py.

The backbone is frozen and kept in eval mode (BN uses its running statistics). The authors' head on res5
(OpenSelfSup MultiClsHead, with_last_layer_unpool=False) average-pools the 7 x 7 map with kernel 6 / stride 1 to
2 x 2 (8192-d for ResNet-50), applies BatchNorm without affine parameters (SyncBN over 8 GPUs there), then one
linear layer (init N(0, 0.01), bias 0): that is head="authors" (adaptive 2 x 2 pooling on non-7x7 maps, as the SVM
features). head="gap" is the common alternative: global average pool + linear layer.
SGD batch 256, lr 0.01, momentum 0.9, nesterov (the authors' configs), weight decay 1e-4, x0.1 at three equally
spaced epochs (28 -> 8/16/24). Train: RandomResizedCrop + flip (+ ColorJitter/Lighting in their ImageNet config);
test: resize the short side (256 for 224) + centre crop, top-1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from orl.bench.classification import ClassificationResult, fit, image_loaders, linear_milestones, step_lr
from orl.bench.features import svm_pool
from orl.models.backbones import feature_dim, global_pool

HEADS = ("authors", "gap")


class LinearProbe(nn.Module):
    """Frozen backbone (always in eval mode, no gradients) + pooled res5 -> [BatchNorm] -> Linear."""

    def __init__(self, backbone: nn.Module, arch: str, num_classes: int, head: str = "authors") -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.backbone = backbone.eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.head = head
        dim = feature_dim(arch) * (4 if head == "authors" else 1)
        # affine=False: the authors' MultiClsHead normalises features without learnable scale or shift.
        self.norm: nn.Module = nn.BatchNorm1d(dim, affine=False, momentum=0.1) if head == "authors" else nn.Identity()
        self.fc = nn.Linear(dim, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def train(self, mode: bool = True) -> LinearProbe:
        """Train the head only; the backbone stays in eval mode so BN statistics never move."""
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of images."""
        with torch.no_grad():
            fmap = self.backbone(x)
            feats = svm_pool(fmap) if self.head == "authors" else global_pool(fmap)
        return self.fc(self.norm(feats.float()))


@dataclass
class TrainConfig:
    """Hyper-parameters of the linear benchmark (the authors' values as defaults)."""

    epochs: int = 28
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = True
    gamma: float = 0.1
    milestones: Sequence[int] | None = None  # default: linear_milestones(epochs)
    crop_size: int = 224
    color_aug: bool = False
    head: str = "authors"
    seed: int = 0
    workers: int = 2
    eval_every: int = 0  # 0: evaluate after the last epoch only

    def resolved_milestones(self) -> list[int]:
        """Milestones given, or the authors' three equally spaced ones for `epochs`."""
        return list(self.milestones) if self.milestones is not None else linear_milestones(self.epochs)


def run_linear(
    backbone: nn.Module,
    arch: str,
    train: tuple[Sequence[Path], Sequence[int]],
    val: tuple[Sequence[Path], Sequence[int]],
    num_classes: int,
    cfg: TrainConfig,
    device: torch.device,
) -> ClassificationResult:
    """Train the linear head on `train` (paths, labels) and report centre-crop accuracy on `val`."""
    torch.manual_seed(cfg.seed)
    model = LinearProbe(backbone, arch, num_classes, cfg.head).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
    )
    for group in optimizer.param_groups:
        group["initial_lr"] = cfg.lr
    loaders = image_loaders(
        train,
        val,
        crop_size=cfg.crop_size,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        seed=cfg.seed,
        device=device,
        color_aug=cfg.color_aug,
    )
    milestones = cfg.resolved_milestones()

    def schedule(epoch: int) -> tuple[float, dict[str, float]]:
        lr = step_lr(cfg.lr, epoch, milestones, cfg.gamma)
        return lr / cfg.lr, {"lr": lr}

    return fit(model, optimizer, loaders, device, cfg.epochs, schedule, cfg.eval_every)
