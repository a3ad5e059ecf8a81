"""Classifiers on frozen, L2-normalised global-average-pooled backbone features: weighted kNN and logistic regression.

One implementation shared by the trainer's online kNN monitor (orl.train.knn_monitor) and the demo-scale
protocols `knn_demo` / `linear_demo` (orl.bench.frozen). The kNN is the one of solo-learn's and lightly's
monitors: cosine similarity to every train feature, the k most similar vote for their class with weight
exp(similarity / T). The linear probe is a multinomial logistic regression trained to convergence by full-batch
L-BFGS from zero init (a convex problem: one optimum whatever the seed), its L2 strength chosen by a
cross-validation on the train split only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from orl.models.backbones import global_pool

KNN_K = 20
KNN_TEMPERATURE = 0.07
# L2 strengths tried by the cross-validation (on features of unit norm, so the scale is data-independent).
WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


@torch.no_grad()
def embed_images(
    backbone: nn.Module, images: torch.Tensor, batch_size: int = 128, device: torch.device | str | None = None
) -> torch.Tensor:
    """(N, C) L2-normalised GAP res5 features of preprocessed images, backbone in eval mode (its mode restored)."""
    was_training = backbone.training
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    backbone.eval()
    try:
        out = [
            F.normalize(global_pool(backbone(images[i : i + batch_size].to(device))).float(), dim=1).cpu()
            for i in range(0, len(images), batch_size)
        ]
    finally:
        backbone.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    chunk: int = 1024,
) -> torch.Tensor:
    """(Q, num_classes) weighted votes: sum of exp(cos / T) over each query's k most similar train features."""
    if temperature <= 0:
        raise ValueError(f"kNN temperature must be > 0, got {temperature}")
    if len(train_features) == 0:
        raise ValueError("kNN needs at least one train feature")
    k = min(int(k), len(train_features))
    bank = F.normalize(train_features.float(), dim=1)
    labels = train_labels.long()
    scores = []
    for i in range(0, len(query_features), chunk):
        sim = F.normalize(query_features[i : i + chunk].float(), dim=1) @ bank.T
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes)
        votes.scatter_add_(1, labels[top_idx], (top_sim / temperature).exp())
        scores.append(votes)
    return torch.cat(scores) if scores else torch.zeros(0, num_classes)


def top1(scores: torch.Tensor, labels: torch.Tensor | Sequence[int]) -> float:
    """Top-1 accuracy in percent of (N, C) scores against N labels."""
    labels = torch.as_tensor(labels).long()
    if len(labels) == 0:
        raise ValueError("top-1 of an empty set")
    return 100.0 * float((scores.argmax(dim=1) == labels).float().mean())


def knn_top1(
    train_features: torch.Tensor,
    train_labels: torch.Tensor | Sequence[int],
    query_features: torch.Tensor,
    query_labels: torch.Tensor | Sequence[int],
    num_classes: int,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
) -> float:
    """Top-1 (%) of the weighted kNN classifier on the query set."""
    scores = knn_scores(train_features, torch.as_tensor(train_labels), query_features, num_classes, k, temperature)
    return top1(scores, query_labels)


def fit_logistic(
    features: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    num_classes: int,
    weight_decay: float,
    max_iter: int = 500,
) -> nn.Linear:
    """Multinomial logistic regression (mean cross-entropy + weight_decay/2 |W|^2), full-batch L-BFGS from zeros."""
    x = features.double()
    y = torch.as_tensor(labels).long()
    head = nn.Linear(x.shape[1], num_classes).double()
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(
        head.parameters(), lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
        history_size=20, line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(head(x), y) + 0.5 * weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return head


def stratified_folds(labels: Sequence[int], folds: int) -> np.ndarray:
    """Fold number of every sample: each class's samples dealt round-robin in order (deterministic, no RNG)."""
    labels = np.asarray(labels)
    fold = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        fold[idx] = np.arange(len(idx)) % folds
    return fold


def cross_validate_weight_decay(
    features: torch.Tensor,
    labels: Sequence[int],
    num_classes: int,
    weight_decays: Sequence[float] = WEIGHT_DECAYS,
    folds: int = 5,
) -> tuple[float, dict[float, float]]:
    """The L2 strength with the best mean held-out top-1 over `folds` stratified folds of the train split.

    Ties go to the stronger regularisation. Returns (chosen, {weight_decay: mean CV top-1}).
    """
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    fold = stratified_folds(labels, folds)
    y = torch.as_tensor(labels).long()
    cv: dict[float, float] = {}
    for wd in weight_decays:
        accs = []
        for f in range(folds):
            held = torch.as_tensor(fold == f)
            if held.all() or not held.any():
                continue
            head = fit_logistic(features[~held], y[~held], num_classes, wd)
            with torch.no_grad():
                accs.append(top1(head(features[held].double()), y[held]))
        cv[float(wd)] = float(np.mean(accs)) if accs else float("nan")
    best = max(sorted(cv, reverse=True), key=lambda wd: cv[wd])
    return best, cv


def linear_top1(
    train_features: torch.Tensor,
    train_labels: Sequence[int],
    query_features: torch.Tensor,
    query_labels: Sequence[int],
    num_classes: int,
    weight_decay: float,
) -> float:
    """Top-1 (%) on the query set of a logistic regression fitted on the train features."""
    head = fit_logistic(train_features, train_labels, num_classes, weight_decay)
    with torch.no_grad():
        return top1(head(query_features.double()), query_labels)
