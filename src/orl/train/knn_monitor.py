"""The trainer's online kNN monitor: top-1 of a weighted kNN on frozen online-backbone features of labelled crops.

As the kNN monitors of solo-learn and lightly, it shows a run learning long before the benchmarks can. A fixed
labelled crop set (ImageFolder train/ and val/, e.g. the demo's object crops) is read and preprocessed once with
deterministic steps only (resize to image_size x image_size, normalise: no random op), so evaluating never
draws from a random stream and a resumed run stays exact. The backbone runs in eval mode under no_grad (BN
running statistics are neither used from the batch nor updated) and gets its mode back afterwards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from orl.bench.feature_classifiers import KNN_K, KNN_TEMPERATURE, embed_images, knn_top1

COLUMN = "knn_top1"


@dataclass(frozen=True)
class KnnMonitorConfig:
    """Where the labelled crops are and how the kNN votes; `every` epochs between evaluations."""

    train_dir: Path
    val_dir: Path
    image_size: int
    every: int = 1
    k: int = KNN_K
    temperature: float = KNN_TEMPERATURE
    batch_size: int = 128


def load_crops(folder: str | os.PathLike, image_size: int, classes: list[str] | None = None):  # noqa: ANN201
    """(images (N, 3, S, S) float32, labels (N,), classes) of an ImageFolder, resized and normalised, no RNG."""
    from orl.bench.classification import scan_image_folder
    from orl.bench.common import squash_transform
    from orl.data.images import open_rgb

    paths, labels, classes = scan_image_folder(folder, classes)
    transform = squash_transform(image_size)
    images = torch.stack([transform(open_rgb(p)) for p in paths])
    return images, torch.tensor(labels, dtype=torch.long), classes


class KnnMonitor:
    """Holds the preprocessed crops; `evaluate(backbone)` gives the kNN top-1 (%) of the val crops."""

    def __init__(self, cfg: KnnMonitorConfig) -> None:
        if cfg.every < 1:
            raise ValueError(f"the kNN monitor's `every` must be >= 1 epoch, got {cfg.every}")
        self.cfg = cfg
        self.train_images, self.train_labels, self.classes = load_crops(cfg.train_dir, cfg.image_size)
        self.val_images, self.val_labels, _ = load_crops(cfg.val_dir, cfg.image_size, self.classes)

    def due(self, epochs_done: int, last_epoch: bool) -> bool:
        """Whether to evaluate after `epochs_done` epochs: every `every` epochs and at the end of training."""
        return last_epoch or epochs_done % self.cfg.every == 0

    def evaluate(self, backbone: nn.Module) -> float:
        """kNN top-1 (%) of the val crops against the train crops, on `backbone`'s L2-normalised GAP features."""
        bs = self.cfg.batch_size
        bank = embed_images(backbone, self.train_images, bs)
        queries = embed_images(backbone, self.val_images, bs)
        return knn_top1(bank, self.train_labels, queries, self.val_labels, len(self.classes), self.cfg.k,
                        self.cfg.temperature)

    def __repr__(self) -> str:
        return (f"KnnMonitor({len(self.train_labels)} train / {len(self.val_labels)} val crops, "
                f"{len(self.classes)} classes, k={self.cfg.k}, T={self.cfg.temperature}, every {self.cfg.every})")
