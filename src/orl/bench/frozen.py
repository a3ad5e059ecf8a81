"""The demo-scale classification protocols on cached frozen features: `linear_demo` and `knn_demo`.

Demo-scale variants of the paper's linear evaluation (SGD on a frozen backbone with augmentation, 28 epochs) and
of the kNN monitors of solo-learn / lightly. The backbone's global-average-pooled res5 features of every crop
(ImageFolder train/ and val/, resized to image_size x image_size, no augmentation) are extracted once and cached in
bench/<method>/frozen_features.h5; both classifiers run on their L2-normalised copies in seconds:
- linear_demo: multinomial logistic regression trained to convergence (full-batch L-BFGS), its L2 strength chosen
  by a stratified cross-validation on the train split (the val split is only ever scored);
- knn_demo: weighted kNN, cosine similarity, k = 20, votes exp(cos / 0.07).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from orl.bench import feature_classifiers as fc
from orl.bench.features import compute_or_load
from orl.models.backbones import global_pool

STAGE = "bench_frozen_features"
POOL_DESCRIPTION = "global average pool of res5, L2-normalised at use"


@dataclass
class LabelledSet:
    """Images of one ImageFolder split with their integer labels (the shape orl.bench.features caches)."""

    paths: list[Path]
    names: list[str]
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.paths)


def labelled_sets(train_dir: str | os.PathLike, val_dir: str | os.PathLike) -> dict[str, LabelledSet]:
    """{"train", "val"} of two ImageFolder trees; the train split fixes the class order."""
    from orl.bench.classification import scan_image_folder

    sets = {}
    classes = None
    for split, root in (("train", Path(train_dir)), ("val", Path(val_dir))):
        paths, labels, classes = scan_image_folder(root, classes)
        names = [str(p.relative_to(root)) for p in paths]
        sets[split] = LabelledSet(paths, names, np.asarray(labels, dtype=np.int64), list(classes))
    return sets


def frozen_params(weights_sha256: str, arch: str, image_size: int) -> dict[str, Any]:
    """What determines the cached features."""
    return {"weights_sha256": weights_sha256, "arch": arch, "image_size": image_size, "pool": POOL_DESCRIPTION}


@dataclass
class FrozenResults:
    """Top-1 of both protocols, with what the linear probe's cross-validation found."""

    linear_top1: float
    knn_top1: float
    weight_decay: float
    cv_top1: dict[float, float] = field(default_factory=dict)


def evaluate_frozen(
    train: tuple[torch.Tensor, Sequence[int]],
    val: tuple[torch.Tensor, Sequence[int]],
    num_classes: int,
    *,
    k: int = fc.KNN_K,
    temperature: float = fc.KNN_TEMPERATURE,
    weight_decays: Sequence[float] = fc.WEIGHT_DECAYS,
    folds: int = 5,
) -> FrozenResults:
    """Both protocols on (features, labels) of train and val; features are L2-normalised here."""
    x_train, y_train = F.normalize(train[0].float(), dim=1), torch.as_tensor(train[1]).long()
    x_val, y_val = F.normalize(val[0].float(), dim=1), torch.as_tensor(val[1]).long()
    wd, cv = fc.cross_validate_weight_decay(x_train, y_train, num_classes, weight_decays, folds)
    return FrozenResults(
        linear_top1=fc.linear_top1(x_train, y_train, x_val, y_val, num_classes, wd),
        knn_top1=fc.knn_top1(x_train, y_train, x_val, y_val, num_classes, k, temperature),
        weight_decay=wd,
        cv_top1=cv,
    )


def frozen_features(
    path: str | os.PathLike,
    make_backbone: Callable[[], nn.Module] | None,
    sets: dict[str, LabelledSet],
    params: dict[str, Any],
    **kwargs: Any,
) -> tuple[dict[str, np.ndarray], bool]:
    """GAP features per split from the cache at `path`, or extracted and cached there; (features, reused)."""
    return compute_or_load(path, make_backbone, sets, params, pool=global_pool, stage=STAGE, **kwargs)
