"""Low-shot VOC07 SVMs, as fair_self_supervised_benchmark's low-shot scripts (used by OpenSelfSup and ORL).

Sampling (create_voc_low_shot_challenge_samples.py): for each independent sample and each k, for each class
separately, k positives and (C - 1) x k negatives are drawn without replacement from trainval (difficult images are
never drawn); the class's SVM trains on those images only. Here each (seed, sample, k) has its own generator, and
counts are capped by what the data has (the caps are reported).
Training (train_svm_low_shot.py): no cross-validation; one SVM per class per cost of the cost list.
Testing and cost choice (test_svm_low_shot.py + aggregate_low_shot_svm_stats.py): test mAP (difficult ignored) for
every cost; per k, the reported cost is the one with the highest mean test mAP over the samples, and the mean and
std (np.std) over samples are reported at that cost. That choice uses the test set, as the authors did; pass one
cost (costs=[c]) for a fixed-cost variant.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning

from orl.bench.multilabel import NEGATIVE, POSITIVE
from orl.bench.voc07_svm import AUTHORS_COSTS, eval_ap, make_svm

AUTHORS_K = (1, 2, 4, 8, 16, 32, 64, 96)
AUTHORS_SAMPLES = 5


def sample_lowshot(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(N, C) int8 targets of one low-shot sample: +1 / -1 for drawn positives / negatives, 0 = not used for that class.

    Per class: min(k, #positives) positives and min((C - 1) k, #negatives) negatives, drawn without replacement.
    """
    labels = np.asarray(labels)
    n, c = labels.shape
    out = np.zeros((n, c), dtype=np.int8)
    for j in range(c):
        for symbol, num in ((POSITIVE, k), (NEGATIVE, (c - 1) * k)):
            pool = np.flatnonzero(labels[:, j] == symbol)
            take = rng.choice(pool, size=min(num, len(pool)), replace=False)
            out[take, j] = symbol
    return out


def sample_generator(seed: int, sample: int, k: int) -> np.random.Generator:
    """The generator of sample `sample` at shot count k: independent of which other k values are run."""
    return np.random.default_rng([seed, sample, k])


def _fit_class(
    x_train: np.ndarray, targets: np.ndarray, x_test: np.ndarray, labels_test: np.ndarray, costs: Sequence[float]
) -> np.ndarray:
    keep = targets != 0
    y = targets[keep].astype(np.int64)
    if not (y == 1).any() or not (y == -1).any():
        return np.full(len(costs), np.nan)
    x = x_train[keep]
    return np.array([eval_ap(labels_test, make_svm(c).fit(x, y).decision_function(x_test)) for c in costs])


@dataclass
class LowShotResult:
    """mAP (percent) per k, sample and cost; the reported cost, mean and std per k; the sampling caps."""

    k_values: list[int]
    costs: list[float]
    maps: np.ndarray  # (K, S, costs) percent
    pos_per_class: dict[int, list[int]] = field(default_factory=dict)  # k -> fewest / most positives drawn
    neg_per_class: dict[int, list[int]] = field(default_factory=dict)

    def chosen_cost_index(self) -> np.ndarray:
        """Per k, the cost with the best mean mAP over samples (the authors' aggregate_low_shot_svm_stats.py)."""
        means = np.nanmean(self.maps, axis=1)
        return np.array([int(np.nanargmax(row)) if np.isfinite(row).any() else 0 for row in means])

    def summary(self) -> dict[int, dict[str, float]]:
        """k -> {"mean", "std", "min", "max", "cost"} at the chosen cost (std = np.std over samples)."""
        out: dict[int, dict[str, float]] = {}
        for i, (k, j) in enumerate(zip(self.k_values, self.chosen_cost_index(), strict=True)):
            v = self.maps[i, :, j]
            out[k] = {
                "mean": float(np.nanmean(v)),
                "std": float(np.nanstd(v)),
                "min": float(np.nanmin(v)),
                "max": float(np.nanmax(v)),
                "cost": float(self.costs[j]),
            }
        return out


def run_lowshot(
    x_train: np.ndarray,
    labels_train: np.ndarray,
    x_test: np.ndarray,
    labels_test: np.ndarray,
    *,
    k_values: Sequence[int] = AUTHORS_K,
    num_samples: int = AUTHORS_SAMPLES,
    costs: Sequence[float] = AUTHORS_COSTS,
    seed: int = 0,
    n_jobs: int = 1,
) -> LowShotResult:
    """Every (k, sample, cost) low-shot run on raw features (L2-normalised here); classes run in `n_jobs` threads."""
    from orl.bench.features import l2_normalize  # features imports torch; keep this module importable without it

    x_train, x_test = l2_normalize(x_train), l2_normalize(x_test)
    labels_train, labels_test = np.asarray(labels_train), np.asarray(labels_test)
    num_classes = labels_train.shape[1]
    maps = np.full((len(k_values), num_samples, len(costs)), np.nan)
    result = LowShotResult([int(k) for k in k_values], [float(c) for c in costs], maps)
    with warnings.catch_warnings(), Parallel(n_jobs=n_jobs, backend="threading") as pool:
        warnings.simplefilter("ignore", ConvergenceWarning)
        for i, k in enumerate(k_values):
            pos_counts, neg_counts = [], []
            for s in range(num_samples):
                targets = sample_lowshot(labels_train, int(k), sample_generator(seed, s, int(k)))
                pos_counts.append((targets == 1).sum(axis=0))
                neg_counts.append((targets == -1).sum(axis=0))
                per_class = pool(
                    delayed(_fit_class)(x_train, targets[:, c], x_test, labels_test[:, c], costs)
                    for c in range(num_classes)
                )
                aps = np.stack(per_class)  # (C, costs); NaN rows = class without test positives or untrainable
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
                    maps[i, s] = 100.0 * np.nanmean(aps, axis=0)
            pos, neg = np.stack(pos_counts), np.stack(neg_counts)
            result.pos_per_class[int(k)] = [int(pos.min()), int(pos.max())]
            result.neg_per_class[int(k)] = [int(neg.min()), int(neg.max())]
    return result
