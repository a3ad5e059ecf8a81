"""Semi-supervised fine-tuning on 1 % / 10 % of the labels, as ORL's configs/benchmarks/semi_classification/.

The whole network is fine-tuned (BN in train mode; SyncBN over 8 GPUs in the authors' runs): backbone + global
average pool + linear layer (init N(0, 0.01), bias 0). SGD batch 256, momentum 0.9, lr 0.01 for the backbone and
1.0 for the classifier (their lr_mult 100), x0.2 at epochs 12 and 16 of 20 (60 % / 80 % when shorter),
weight decay 0 for 1 % and 1e-4 for 10 % (ORL_SPEC; ORL's released 10 % config file is named ..._wd0).
Train: RandomResizedCrop + flip; test: resize short side + centre crop, top-1.

Label subsets: SimCLR's list files (one image file name per line, e.g. n01440764_10026.JPEG; a second column, as
OpenSelfSup's "path label" lists, is ignored) matched by file name, or a seeded per-class sample.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from orl.bench.classification import ClassificationResult, fit, image_loaders, semi_milestones, step_lr
from orl.models.backbones import feature_dim, global_pool
from orl.precision import native_bf16

AUTHORS_WEIGHT_DECAY = {1: 0.0, 10: 1e-4}


def read_subset_list(path: str | os.PathLike) -> list[str]:
    """File names of a SimCLR-style subset list (first column, directory part dropped)."""
    names = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            names.append(Path(line.split()[0]).name)
    return names


def subset_from_list(paths: Sequence[Path], names: Sequence[str]) -> np.ndarray:
    """Indices of `paths` whose file name is in `names`; ValueError when some listed names are missing."""
    wanted = set(names)
    idx = np.array([i for i, p in enumerate(paths) if Path(p).name in wanted], dtype=np.int64)
    found = {Path(paths[i]).name for i in idx}
    missing = wanted - found
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(wanted)} listed images are not in the train folder, e.g. {sorted(missing)[:3]}"
        )
    return idx


def sample_subset(labels: Sequence[int], fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a per-class sample: max(1, round(fraction x n_c)) images of every class c, seeded per class."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    picked = []
    for c in np.unique(labels):
        pool = np.flatnonzero(labels == c)
        n = max(1, int(round(fraction * len(pool))))
        picked.append(np.random.default_rng([seed, int(c)]).choice(pool, size=min(n, len(pool)), replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


class FineTuneNet(nn.Module):
    """Backbone + global average pool + linear classifier, all trained."""

    def __init__(self, backbone: nn.Module, arch: str, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(feature_dim(arch), num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of images."""
        return self.fc(global_pool(self.backbone(x)))


@dataclass
class SemiConfig:
    """Hyper-parameters of the semi-supervised benchmark (the authors' values as defaults)."""

    epochs: int = 20
    batch_size: int = 256
    backbone_lr: float = 0.01
    head_lr: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    gamma: float = 0.2
    milestones: Sequence[int] | None = None  # default: semi_milestones(epochs)
    crop_size: int = 224
    seed: int = 0
    workers: int = 2
    # On CUDA, bf16 autocast where the GPU has it: the authors split batch 256 over 8 GPUs, and one GPU holding
    # ResNet-50's fp32 activations for all 256 images does not fit 40 GB. "fp32" turns it off; CPU runs fp32.
    precision: str = "bf16"

    def resolved_milestones(self) -> list[int]:
        """Milestones given, or 60 % / 80 % of the epochs."""
        return list(self.milestones) if self.milestones is not None else semi_milestones(self.epochs)


def run_semi(
    backbone: nn.Module,
    arch: str,
    train: tuple[Sequence[Path], Sequence[int]],
    val: tuple[Sequence[Path], Sequence[int]],
    num_classes: int,
    cfg: SemiConfig,
    device: torch.device,
) -> ClassificationResult:
    """Fine-tune on the labelled subset `train` and report centre-crop accuracy on `val`."""
    torch.manual_seed(cfg.seed)
    model = FineTuneNet(backbone, arch, num_classes).to(device)
    optimizer = torch.optim.SGD(
        [
            {"params": model.backbone.parameters(), "lr": cfg.backbone_lr, "initial_lr": cfg.backbone_lr},
            {"params": model.fc.parameters(), "lr": cfg.head_lr, "initial_lr": cfg.head_lr},
        ],
        lr=cfg.backbone_lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    loaders = image_loaders(
        train,
        val,
        crop_size=cfg.crop_size,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        seed=cfg.seed,
        device=device,
    )
    milestones = cfg.resolved_milestones()

    def schedule(epoch: int) -> tuple[float, dict[str, float]]:
        factor = step_lr(1.0, epoch, milestones, cfg.gamma)
        return factor, {"lr_factor": factor}

    # No fp16 fallback: the shared fit loop has no loss scaling, so a GPU without bf16 trains in fp32.
    amp = cfg.precision == "bf16" and device.type == "cuda" and native_bf16(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        return fit(model, optimizer, loaders, device, cfg.epochs, schedule)
