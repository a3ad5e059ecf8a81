"""linear_demo and knn_demo: the converged probe on a separable toy, the stage against a direct weighted vote."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from bench_helpers import random_backbone, run_stage, tiny_demo

from orl.artifacts import open_artifact
from orl.bench import feature_classifiers as fc
from orl.bench.frozen import STAGE, evaluate_frozen
from orl.stages import bench_crops, bench_frozen


def _separable(n_per_class: int, classes: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points around random class centres, far apart compared to the spread; labels in class order."""
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(classes, dim, generator=torch.Generator().manual_seed(123))
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[labels] + 0.3 * torch.randn(len(labels), dim, generator=g), labels


def test_converged_linear_probe_separates_a_separable_toy() -> None:
    x, y = _separable(30, 5, 16, seed=0)
    xv, yv = _separable(20, 5, 16, seed=1)
    assert fc.linear_top1(x, y, xv, yv, 5, weight_decay=1e-4) == 100.0
    result = evaluate_frozen((x, y), (xv, yv), 5)
    assert result.linear_top1 == 100.0 and result.knn_top1 == 100.0
    assert set(result.cv_top1) == set(fc.WEIGHT_DECAYS) and result.weight_decay in fc.WEIGHT_DECAYS


def test_logistic_fit_reaches_the_optimum() -> None:
    x, y = _separable(10, 3, 4, seed=2)
    head = fc.fit_logistic(x, y, 3, weight_decay=1e-2)
    head.zero_grad()
    loss = torch.nn.functional.cross_entropy(head(x.double()), y) + 0.5e-2 * head.weight.pow(2).sum()
    loss.backward()
    assert head.weight.grad.abs().max() < 1e-5 and head.bias.grad.abs().max() < 1e-5  # a stationary point


def test_folds_are_stratified_and_deterministic() -> None:
    labels = [0] * 7 + [1] * 5 + [2] * 3
    folds = fc.stratified_folds(labels, 3)
    assert folds.tolist() == fc.stratified_folds(labels, 3).tolist()
    for c in (0, 1, 2):
        counts = np.bincount(folds[np.asarray(labels) == c], minlength=3)
        assert counts.max() - counts.min() <= 1
    with pytest.raises(ValueError, match="2 folds"):
        fc.cross_validate_weight_decay(torch.zeros(4, 2), [0, 1, 0, 1], 2, folds=1)


@pytest.mark.slow
def test_stage_writes_both_results_and_knn_matches_a_direct_vote(tmp_path: Path) -> None:
    demo = tiny_demo(tmp_path / "demo", num_train=12, num_val=6)
    run_stage(bench_crops, ["--demo-root", str(demo), "--out", str(tmp_path / "crops"), "--size", "32"])
    weights = random_backbone(tmp_path / "backbone.pth")
    out = tmp_path / "bench" / "random"
    argv = [
        "--weights", str(weights), "--method-name", "random",
        "--train-dir", str(tmp_path / "crops" / "train"), "--val-dir", str(tmp_path / "crops" / "val"),
        "--features", str(out / "frozen_features.h5"), "--linear-out", str(out / "linear_demo.json"),
        "--knn-out", str(out / "knn_demo.json"), "--image-size", "32", "--k", "5", "--temperature", "0.1",
        "--folds", "3", "--workers", "0", "--threads", "1",
    ]
    run_stage(bench_frozen, argv)
    linear = json.loads((out / "linear_demo.json").read_text())
    knn = json.loads((out / "knn_demo.json").read_text())
    classes = linear["settings"]["num_classes"]
    for doc, name in ((linear, "linear_demo"), (knn, "knn_demo")):
        assert doc["benchmark"] == name and doc["method"] == "random"
        assert 0 <= doc["metrics"]["top1"]["mean"] <= 100
        assert doc["chance"] == {"top1": pytest.approx(100.0 / classes)}
    assert linear["settings"]["weight_decay"] in fc.WEIGHT_DECAYS
    assert knn["settings"]["k"] == 5 and knn["settings"]["temperature"] == 0.1

    # The weighted vote, computed directly from the cached features.
    with open_artifact(out / "frozen_features.h5", stage=STAGE) as art:
        xt, yt = art.array("train_features").astype(np.float64), art.array("train_labels")
        xv, yv = art.array("val_features").astype(np.float64), art.array("val_labels")
    xt /= np.linalg.norm(xt, axis=1, keepdims=True)
    xv /= np.linalg.norm(xv, axis=1, keepdims=True)
    correct = 0
    for q in range(len(xv)):
        sims = xt @ xv[q]
        votes = np.zeros(classes)
        for j in np.argsort(-sims, kind="stable")[:5]:
            votes[yt[j]] += math.exp(sims[j] / 0.1)
        correct += int(np.argmax(votes) == yv[q])
    assert knn["metrics"]["top1"]["mean"] == pytest.approx(100.0 * correct / len(xv))

    # A rerun reuses the cached features and gives the same numbers.
    run_stage(bench_frozen, argv)
    again = json.loads((out / "knn_demo.json").read_text())
    assert again["details"]["features_reused"] and again["metrics"] == knn["metrics"]
    assert json.loads((out / "linear_demo.json").read_text())["metrics"] == linear["metrics"]
