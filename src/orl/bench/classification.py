"""Shared pieces of the linear and semi-supervised benchmarks: ImageFolder scanning, transforms, data loaders,
step schedules, a training epoch, top-1 evaluation and the result record.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from orl.bench.common import PathImages, make_loader
from orl.data.augment import eval_transform, normalize_steps
from orl.data.images import IMAGE_SUFFIXES

# AlexNet-style PCA lighting noise on ImageNet (OpenSelfSup's "Lighting"), used by the authors' ImageNet linear config.
_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
_EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])


def scan_image_folder(
    root: str | os.PathLike, classes: Sequence[str] | None = None
) -> tuple[list[Path], list[int], list[str]]:
    """(paths, labels, classes) of an ImageFolder tree; `classes` (from the train split) fixes the label order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such image folder")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise ValueError(f"{root} has classes absent from the train split: {unknown[:5]}")
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for name in found:
        for path in sorted((root / name).rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(path)
                labels.append(index[name])
    if not paths:
        raise ValueError(f"{root}: no images in class sub-folders")
    return paths, labels, list(classes)


class Lighting:
    """PCA lighting noise (alphastd 0.1) on a normalised-range float image, as OpenSelfSup's Lighting."""

    def __init__(self, alphastd: float = 0.1) -> None:
        self.alphastd = alphastd

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        alpha = torch.randn(3) * self.alphastd
        rgb = (_EIGVEC * alpha[None, :] * _EIGVAL[None, :]).sum(dim=1)
        return img + rgb.view(3, 1, 1)


def train_transform(size: int, color_aug: bool = False) -> Callable[[Any], torch.Tensor]:
    """RandomResizedCrop + horizontal flip (+ the ImageNet config's ColorJitter 0.4 and Lighting when color_aug)."""
    steps: list[Any] = [
        v2.RandomResizedCrop(size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if color_aug:
        steps.append(v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.0))
    steps += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)]
    if color_aug:
        steps.append(Lighting())
    steps.append(normalize_steps()[1])
    return v2.Compose(steps)


def eval_resize(size: int) -> int:
    """Short side before the centre crop: 256 for 224, scaled for other crop sizes."""
    return int(math.floor(size * 256 / 224 + 0.5))


def center_crop_transform(size: int) -> Callable[[Any], torch.Tensor]:
    """Resize the short side to eval_resize(size), centre-crop size x size, normalise."""
    return eval_transform(size=size, resize=eval_resize(size))


def step_lr(base_lr: float, epoch: int, milestones: Sequence[int], gamma: float) -> float:
    """mmcv's "step" policy: base_lr x gamma ^ (number of milestones <= epoch), epoch counted from 0."""
    return base_lr * gamma ** sum(1 for m in milestones if epoch >= m)


def linear_milestones(epochs: int) -> list[int]:
    """The authors' three equally spaced decays, every round(2E/7) epochs.

    Their configs: 28 epochs -> 8, 16, 24 (ImageNet); 14 -> 4, 8, 12 (Places205); 84 -> 24, 48, 72 (iNat18).
    """
    step = max(1, round(2 * epochs / 7))
    return [step, 2 * step, 3 * step]


def semi_milestones(epochs: int) -> list[int]:
    """Decays at 60 % and 80 % of training (20 -> 12, 16, the authors' semi-supervised schedule)."""
    return [max(1, round(0.6 * epochs)), max(1, round(0.8 * epochs))]


def set_lrs(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Every group's lr = its base lr ("initial_lr") x factor."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor


def train_epoch(
    model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, device: torch.device
) -> tuple[float, float]:
    """One pass of cross-entropy training; returns (mean loss, train top-1 %)."""
    model.train()
    total, loss_sum, correct = 0, 0.0, 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += len(y)
        loss_sum += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
    return loss_sum / max(total, 1), 100.0 * correct / max(total, 1)


@torch.inference_mode()
def evaluate(
    model: nn.Module, loader: DataLoader, device: torch.device, topk: Sequence[int] = (1, 5)
) -> dict[int, float]:
    """Top-k accuracy (%) for each k in `topk` that does not exceed the number of classes."""
    model.eval()
    hits: dict[int, int] = {}
    total = 0
    for x, y in loader:
        logits = model(x.to(device, non_blocking=True))
        y = y.to(device)
        ks = [k for k in topk if k <= logits.shape[1]]
        top = logits.topk(max(ks), dim=1).indices
        for k in ks:
            hits[k] = hits.get(k, 0) + int((top[:, :k] == y[:, None]).any(1).sum())
        total += len(y)
    return {k: 100.0 * v / max(total, 1) for k, v in hits.items()}


def drop_last_for_bn(num_images: int, batch_size: int) -> bool:
    """Drop the last batch only when it would hold one image (BatchNorm cannot train on a single value)."""
    return num_images > batch_size and num_images % batch_size == 1


def image_loaders(
    train: tuple[Sequence[Path], Sequence[int]],
    val: tuple[Sequence[Path], Sequence[int]],
    *,
    crop_size: int,
    batch_size: int,
    workers: int,
    seed: int,
    device: torch.device,
    color_aug: bool = False,
) -> tuple[DataLoader, DataLoader]:
    """Seeded shuffled train_transform loader over `train` and centre-crop loader over `val` ((paths, labels) each)."""
    train_ds = PathImages(train[0], train_transform(crop_size, color_aug), train[1])
    val_ds = PathImages(val[0], center_crop_transform(crop_size), val[1])
    train_loader = make_loader(
        train_ds,
        batch_size,
        workers,
        shuffle=True,
        seed=seed,
        device=device,
        drop_last=drop_last_for_bn(len(train_ds), batch_size),
    )
    return train_loader, make_loader(val_ds, batch_size, workers, device=device)


@dataclass
class ClassificationResult:
    """Final top-1 / top-5 (%) and the per-epoch log."""

    top1: float
    top5: float | None
    history: list[dict[str, float]] = field(default_factory=list)


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loaders: tuple[DataLoader, DataLoader],
    device: torch.device,
    epochs: int,
    schedule: Callable[[int], tuple[float, dict[str, float]]],
    eval_every: int = 0,  # > 0: also evaluate every eval_every epochs
) -> ClassificationResult:
    """Train on loaders[0], lr factor schedule(e)[0] in epoch e (logs schedule(e)[1]); then top-k on loaders[1]."""
    train_loader, val_loader = loaders
    history: list[dict[str, float]] = []
    acc: dict[int, float] = {}
    for epoch in range(epochs):
        factor, logged = schedule(epoch)
        set_lrs(optimizer, factor)
        loss, train_top1 = train_epoch(model, train_loader, optimizer, device)
        row = {"epoch": epoch + 1, **logged, "loss": loss, "train_top1": train_top1}
        last = epoch + 1 == epochs
        if last or (eval_every and (epoch + 1) % eval_every == 0):
            acc = evaluate(model, val_loader, device)
            row["val_top1"] = acc[1]
        history.append(row)
    return ClassificationResult(top1=acc[1], top5=acc.get(5), history=history)
