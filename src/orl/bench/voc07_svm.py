"""VOC07 linear SVM classification, as FAIR's fair_self_supervised_benchmark (used by OpenSelfSup and ORL).

Per class, one-vs-rest LinearSVC (squared hinge, L2, class_weight {1: 2, -1: 1}, tol 1e-4, dual, max_iter 2000)
on L2-normalised features. Cost per class: the one with the best mean 3-fold cross-validated AP
(sklearn cross_val_score, scoring="average_precision", unshuffled stratified folds) over
[1, 10, 100] + [0.5^4 ... 0.5^19], first maximum in that order (np.argmax); then refit on all of trainval.

Training labels: present -> +1, everything else -> -1; in train_svm_kfold.py the "difficult" label is not
removed, so difficult images are NEGATIVES in training (kept as the default here; --train-difficult ignore drops
them). Test: difficult images are removed for that class, and AP is the authors' `calculate_ap`: the area under
the precision-recall curve with precision made monotone (VOC2010+ "all points" AP), NOT the VOC07 11-point AP and
NOT sklearn's non-interpolated average_precision_score (which the authors use only inside cross-validation).
mAP = mean over classes, x 100.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning, UndefinedMetricWarning
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC

from orl.bench.multilabel import DIFFICULT, POSITIVE

# svm_helper.parse_cost_list with the "1.0,10.0,100.0" passed by OpenSelfSup's eval_svm_full.sh / eval_svm_lowshot.sh.
AUTHORS_COSTS: tuple[float, ...] = (1.0, 10.0, 100.0, *(0.5**p for p in range(4, 20)))
CV_FOLDS = 3
SVM_SEED = 0  # the authors leave LinearSVC's dual-CD shuffling unseeded; we fix it so reruns give identical numbers


def make_svm(cost: float) -> LinearSVC:
    """The authors' LinearSVC for one cost."""
    return LinearSVC(
        C=cost,
        class_weight={1: 2, -1: 1},
        intercept_scaling=1.0,
        penalty="l2",
        loss="squared_hinge",
        tol=1e-4,
        dual=True,
        max_iter=2000,
        random_state=SVM_SEED,
    )


def calculate_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the PR curve with the precision envelope (port of svm_helper.calculate_ap, vectorised)."""
    mrec = np.concatenate([[0.0], np.asarray(recall, dtype=np.float64), [1.0]])
    mpre = np.concatenate([[0.0], np.asarray(precision, dtype=np.float64), [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision at recall r := max precision at recall >= r
    idx = np.where(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mpre[idx]))


def voc_ap(targets: np.ndarray, scores: np.ndarray) -> float:
    """AP of `scores` for binary targets (> 0 = positive), ranked as the authors rank them; NaN without positives."""
    targets = np.asarray(targets) > 0
    scores = np.asarray(scores, dtype=np.float64)
    if not targets.any():
        return float("nan")
    order = np.argsort(scores)[::-1]  # the authors' (unstable) order, so tied scores rank exactly as theirs
    tp = targets[order].astype(np.float64)
    ctp, cfp = np.cumsum(tp), np.cumsum(1.0 - tp)
    return calculate_ap(ctp / targets.sum(), ctp / (ctp + cfp))


def train_targets(labels: np.ndarray, train_difficult: str = "negative") -> tuple[np.ndarray, np.ndarray]:
    """(row mask, +1/-1 targets) for one class's VOC labels; difficult -> negative (authors) or dropped ("ignore")."""
    labels = np.asarray(labels)
    if train_difficult == "negative":
        keep = np.ones(len(labels), dtype=bool)
    elif train_difficult == "ignore":
        keep = labels != DIFFICULT
    else:
        raise ValueError(f"train_difficult must be 'negative' or 'ignore', got {train_difficult!r}")
    return keep, np.where(labels[keep] == POSITIVE, 1, -1)


def eval_ap(labels: np.ndarray, scores: np.ndarray) -> float:
    """AP of one class on the test set with its difficult images removed (NaN when it has no positive)."""
    labels = np.asarray(labels)
    keep = labels != DIFFICULT
    return voc_ap(labels[keep] == POSITIVE, np.asarray(scores)[keep])


def cross_val_aps(
    features: np.ndarray, targets: np.ndarray, costs: Sequence[float], folds: int = CV_FOLDS
) -> np.ndarray:
    """Mean `folds`-fold cross-validated AP per cost: sklearn's cross_val_score(scoring="average_precision") numbers.

    Without its per-call overhead: the same unshuffled StratifiedKFold splits (made once, they do not depend on the
    cost) and the same average_precision_score on decision_function.
    """
    splits = list(StratifiedKFold(n_splits=folds).split(features, targets))
    out = np.full(len(costs), np.nan)
    for j, cost in enumerate(costs):
        scores = []
        for train_idx, test_idx in splits:
            clf = make_svm(cost).fit(features[train_idx], targets[train_idx])
            scores.append(average_precision_score(targets[test_idx], clf.decision_function(features[test_idx])))
        out[j] = float(np.mean(scores))
    return out


def choose_cost(cv_aps: np.ndarray, costs: Sequence[float]) -> float:
    """The cost with the highest cross-validated AP; the first one in list order on ties (np.argmax, as the authors)."""
    cv_aps = np.asarray(cv_aps, dtype=np.float64)
    if np.all(np.isnan(cv_aps)):
        return float(costs[0])
    return float(costs[int(np.nanargmax(cv_aps))])


@dataclass
class ClassResult:
    """One class: cross-validated AP per cost, the chosen cost, and the test AP (NaN if it could not be trained)."""

    cv_aps: np.ndarray
    cost: float
    ap: float
    num_pos: int
    num_neg: int


def _one_class(
    x_train: np.ndarray,
    labels_train: np.ndarray,
    x_test: np.ndarray,
    labels_test: np.ndarray,
    costs: Sequence[float],
    folds: int,
    train_difficult: str,
) -> ClassResult:
    keep, y = train_targets(labels_train, train_difficult)
    num_pos, num_neg = int((y == 1).sum()), int((y == -1).sum())
    if num_pos == 0 or num_neg == 0:
        return ClassResult(np.full(len(costs), np.nan), float("nan"), float("nan"), num_pos, num_neg)
    x = x_train[keep]
    # Cross-validation needs a positive in every fold; with fewer positives than folds use as many folds as there
    # are positives (>= 2), else skip selection and take the first cost.
    k = min(folds, num_pos, num_neg)
    cv = cross_val_aps(x, y, costs, k) if k >= 2 else np.full(len(costs), np.nan)
    cost = choose_cost(cv, costs)
    clf = make_svm(cost).fit(x, y)
    return ClassResult(cv, cost, eval_ap(labels_test, clf.decision_function(x_test)), num_pos, num_neg)


@dataclass
class SvmResult:
    """All classes: per-class results and mAP (percent) over the classes that have an AP."""

    classes: list[str]
    per_class: list[ClassResult]

    @property
    def aps(self) -> np.ndarray:
        """Per-class test AP (fraction; NaN = no positive in train or test)."""
        return np.array([r.ap for r in self.per_class])

    @property
    def map(self) -> float:
        """Mean test AP over classes with an AP, in percent."""
        aps = self.aps
        return float(100.0 * np.nanmean(aps)) if np.isfinite(aps).any() else float("nan")


def run_voc07_svm(
    x_train: np.ndarray,
    labels_train: np.ndarray,
    x_test: np.ndarray,
    labels_test: np.ndarray,
    classes: Sequence[str],
    *,
    costs: Sequence[float] = AUTHORS_COSTS,
    folds: int = CV_FOLDS,
    train_difficult: str = "negative",
    n_jobs: int = 1,
) -> SvmResult:
    """Train and test one SVM per class on raw features (L2-normalised here); classes run in `n_jobs` threads."""
    from orl.bench.features import l2_normalize  # features imports torch; keep this module importable without it

    x_train, x_test = l2_normalize(x_train), l2_normalize(x_test)
    labels_train, labels_test = np.asarray(labels_train), np.asarray(labels_test)
    with warnings.catch_warnings():
        # liblinear hits max_iter on tiny costs and folds without positives are unscorable; the authors ran the same.
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        # liblinear releases the GIL, so threads run classes in parallel without copying the features.
        per_class = Parallel(n_jobs=n_jobs, backend="threading")(
            delayed(_one_class)(x_train, labels_train[:, c], x_test, labels_test[:, c], costs, folds, train_difficult)
            for c in range(len(classes))
        )
    return SvmResult(list(classes), list(per_class))
