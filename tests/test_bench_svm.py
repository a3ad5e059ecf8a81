"""VOC07 SVM and low-shot benchmarks: the authors' AP, cost choice, difficult labels, sampling, weights, tiny runs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from bench_helpers import random_backbone, run_stage, tiny_demo
from sklearn.metrics import average_precision_score, precision_recall_curve

from orl.artifacts import read_attrs
from orl.bench import features as bench_features
from orl.bench.lowshot import run_lowshot, sample_generator, sample_lowshot
from orl.bench.multilabel import DIFFICULT, NEGATIVE, POSITIVE, read_coco_multilabel, read_voc
from orl.bench.voc07_svm import (
    AUTHORS_COSTS,
    choose_cost,
    cross_val_aps,
    eval_ap,
    run_voc07_svm,
    train_targets,
    voc_ap,
)
from orl.bench.weights import WeightsError, infer_arch, load_backbone, read_backbone_state
from orl.stages import bench_lowshot, bench_svm


def _authors_ap(targets: np.ndarray, preds: np.ndarray) -> float:
    """Line-by-line copy of fair_self_supervised_benchmark svm_helper.get_precision_recall + calculate_ap."""
    targets = np.array(targets > 0, dtype=np.float32)
    tog = np.hstack((targets[:, np.newaxis].astype(np.float64), preds[:, np.newaxis].astype(np.float64)))
    ind = np.argsort(preds)[::-1]
    sortcounts = np.array([tog[i, 0] for i in ind])
    tp = sortcounts
    fp = sortcounts.copy()
    for i in range(sortcounts.shape[0]):
        fp[i] = 0.0 if sortcounts[i] >= 1 else 1.0
    prec = np.cumsum(tp) / (np.cumsum(tp) + np.cumsum(fp))
    rec = np.cumsum(tp) / np.sum(targets)
    rec, prec = rec.reshape(rec.size, 1), prec.reshape(prec.size, 1)
    z, o = np.zeros((1, 1)), np.ones((1, 1))
    mrec, mpre = np.vstack((z, rec, o)), np.vstack((z, prec, z))
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    indices = np.where(mrec[1:] != mrec[0:-1])[0] + 1
    ap = 0.0
    for i in indices:
        ap = ap + (mrec[i] - mrec[i - 1]) * mpre[i]
    return float(np.asarray(ap).item())


def _interpolated_ap_sklearn(targets: np.ndarray, scores: np.ndarray) -> float:
    """Independent reference: sklearn's PR curve with the precision envelope (max precision at recall >= r)."""
    precision, recall, _ = precision_recall_curve(targets, scores)  # recall decreasing
    envelope = np.maximum.accumulate(precision)
    return float(-np.sum(np.diff(recall) * envelope[:-1]))


# ---------------------------------------------------------------- AP


@pytest.mark.parametrize("seed", range(5))
def test_ap_matches_authors_code_including_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, 40)
    targets[0] = 1
    scores = np.round(rng.normal(size=40), 1)  # rounding makes ties
    assert voc_ap(targets, scores) == pytest.approx(_authors_ap(targets, scores), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_ap_is_interpolated_pr_area_and_bounds_sklearn_ap(seed: int) -> None:
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, 50)
    targets[:2] = (1, 0)
    scores = rng.normal(size=50) + targets  # no ties
    ours = voc_ap(targets, scores)
    assert ours == pytest.approx(_interpolated_ap_sklearn(targets, scores), abs=1e-12)
    # sklearn's average_precision_score does not interpolate, so it can only be lower or equal.
    assert ours >= average_precision_score(targets, scores) - 1e-12


def test_ap_equals_sklearn_when_precision_only_falls_and_differs_otherwise() -> None:
    # Ranked positives at 1, 2, 4: precision 1, 1, 0.75 never rises -> both definitions give 11/12.
    targets, scores = np.array([1, 1, 0, 1, 0]), np.array([5.0, 4, 3, 2, 1])
    assert voc_ap(targets, scores) == pytest.approx(11 / 12)
    assert average_precision_score(targets, scores) == pytest.approx(11 / 12)
    # Negative first: precision 1/2 then 2/3 rises; the envelope lifts it -> 2/3 (sklearn: 0.5 * 1/2 + 0.5 * 2/3).
    targets, scores = np.array([0, 1, 1]), np.array([3.0, 2, 1])
    assert voc_ap(targets, scores) == pytest.approx(2 / 3)
    assert average_precision_score(targets, scores) == pytest.approx(7 / 12)


def test_ap_without_positives_is_nan() -> None:
    assert np.isnan(voc_ap(np.zeros(4), np.arange(4.0)))


# ---------------------------------------------------------------- difficult labels


def test_difficult_ignored_at_test_time() -> None:
    labels = np.array([DIFFICULT, POSITIVE, NEGATIVE, POSITIVE, DIFFICULT, NEGATIVE])
    scores = np.array([9.0, 5, 4, 3, 8, 1])  # the difficult images score highest: counted, they would be FPs
    keep = labels != DIFFICULT
    assert eval_ap(labels, scores) == pytest.approx(voc_ap(labels[keep] == POSITIVE, scores[keep]))
    assert eval_ap(labels, scores) > voc_ap(labels == POSITIVE, scores)


def test_difficult_are_negatives_in_training_as_the_authors() -> None:
    labels = np.array([POSITIVE, DIFFICULT, NEGATIVE])
    keep, y = train_targets(labels)
    assert keep.all() and y.tolist() == [1, -1, -1]
    keep, y = train_targets(labels, "ignore")
    assert keep.tolist() == [True, False, True] and y.tolist() == [1, -1]


# ---------------------------------------------------------------- cost choice


def _hard_case(seed: int = 0, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Separable on x1 with a small margin; x2 is large pure noise. A tiny cost (w ~ class-weighted mean) ranks by
    the noise (AP ~ 0.5); a large cost finds the margin (AP 1)."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n), -np.ones(n)].astype(np.int64)
    x = np.c_[np.where(y == 1, 0.1, -0.1) + rng.normal(0, 0.01, 2 * n), rng.normal(0, 10, 2 * n)]
    return x, y


def test_cross_validation_matches_sklearn_cross_val_score() -> None:
    from sklearn.model_selection import cross_val_score

    from orl.bench.voc07_svm import make_svm

    x, y = _hard_case(1)
    costs = [1.0, 0.5**10]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # liblinear's max_iter, as in the authors' runs
        ref = [cross_val_score(make_svm(c), x, y, cv=3, scoring="average_precision").mean() for c in costs]
        np.testing.assert_allclose(cross_val_aps(x, y, costs), ref, atol=1e-12)


def test_cost_choice_picks_the_known_best_cost() -> None:
    x, y = _hard_case()
    costs = [0.5**19, 100.0, 0.5**10]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cv = cross_val_aps(x, y, costs)
    assert cv[1] > 0.99 and cv[0] < 0.8 and cv[2] < 0.8
    assert choose_cost(cv, costs) == 100.0


def test_cost_choice_takes_the_first_of_tied_costs_and_skips_nan() -> None:
    costs = [0.5**19, 1.0, 100.0]
    assert choose_cost(np.array([0.5, 1.0, 1.0]), costs) == 1.0
    assert choose_cost(np.array([np.nan, 0.2, 0.9]), costs) == 100.0
    assert choose_cost(np.array([np.nan, np.nan, np.nan]), costs) == costs[0]


def test_authors_cost_list() -> None:
    assert AUTHORS_COSTS[:3] == (1.0, 10.0, 100.0)
    assert AUTHORS_COSTS[3:] == tuple(0.5**p for p in range(4, 20))


def test_run_svm_reports_nan_for_classes_without_positives() -> None:
    rng = np.random.default_rng(0)
    x_train, x_test = rng.normal(size=(30, 8)), rng.normal(size=(12, 8))
    labels_train = np.full((30, 2), NEGATIVE)
    labels_train[:10, 0] = POSITIVE  # class 1 has no positive: it cannot be trained
    labels_test = np.full((12, 2), NEGATIVE)
    labels_test[:4] = POSITIVE
    result = run_voc07_svm(x_train, labels_train, x_test, labels_test, ["a", "b"], costs=[1.0])
    assert np.isfinite(result.aps[0]) and np.isnan(result.aps[1])
    assert result.map == pytest.approx(100 * result.aps[0])


# ---------------------------------------------------------------- low-shot sampling


def _labels(seed: int = 0, n: int = 80, c: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice([POSITIVE, NEGATIVE, NEGATIVE, DIFFICULT], size=(n, c)).astype(np.int8)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_lowshot_sampler_counts_and_pools(k: int) -> None:
    labels = _labels()
    c = labels.shape[1]
    out = sample_lowshot(labels, k, np.random.default_rng(0))
    assert ((out == POSITIVE).sum(axis=0) == k).all()
    assert ((out == NEGATIVE).sum(axis=0) == (c - 1) * k).all()
    assert (labels[out == POSITIVE] == POSITIVE).all() and (labels[out == NEGATIVE] == NEGATIVE).all()
    assert not (out[labels == DIFFICULT] != 0).any()  # difficult images are never drawn


def test_lowshot_sampler_caps_at_the_data() -> None:
    labels = _labels()
    out = sample_lowshot(labels, 1000, np.random.default_rng(0))
    assert ((out == POSITIVE).sum(0) == (labels == POSITIVE).sum(0)).all()
    assert ((out == NEGATIVE).sum(0) == (labels == NEGATIVE).sum(0)).all()


def test_lowshot_sampler_is_deterministic_and_samples_differ() -> None:
    labels = _labels()
    a = sample_lowshot(labels, 4, sample_generator(0, 1, 4))
    b = sample_lowshot(labels, 4, sample_generator(0, 1, 4))
    other = sample_lowshot(labels, 4, sample_generator(0, 2, 4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, other)


def test_lowshot_reports_the_best_mean_cost_per_k() -> None:
    rng = np.random.default_rng(0)
    labels = _labels(1, n=60, c=3)
    x = rng.normal(size=(60, 6)) + (labels == POSITIVE) @ rng.normal(size=(3, 6)) * 2
    test_labels = _labels(2, n=30, c=3)
    x_test = rng.normal(size=(30, 6)) + (test_labels == POSITIVE) @ rng.normal(size=(3, 6)) * 2
    res = run_lowshot(x, labels, x_test, test_labels, k_values=[1, 2], num_samples=3, costs=[1.0, 0.5**10])
    assert res.maps.shape == (2, 3, 2)
    summary = res.summary()
    for i, k in enumerate([1, 2]):
        j = int(np.argmax(res.maps[i].mean(axis=0)))
        assert summary[k]["cost"] == [1.0, 0.5**10][j]
        assert summary[k]["mean"] == pytest.approx(res.maps[i, :, j].mean())
        assert summary[k]["std"] == pytest.approx(res.maps[i, :, j].std())
    assert res.pos_per_class[2] == [2, 2]


# ---------------------------------------------------------------- features and weights


def test_svm_pool_is_the_authors_on_7x7_and_adaptive_otherwise() -> None:
    fmap = torch.randn(2, 3, 7, 7)
    ref = torch.nn.AvgPool2d(6, stride=1)(fmap).flatten(1)
    assert torch.allclose(bench_features.svm_pool(fmap), ref)
    small = torch.randn(2, 3, 3, 3)
    assert bench_features.svm_pool(small).shape == (2, 12)
    assert torch.allclose(bench_features.svm_pool(small), torch.nn.AvgPool2d(2, stride=1)(small).flatten(1))


def test_l2_normalize_as_the_authors() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(bench_features.l2_normalize(x), [[3 / 5.00001, 4 / 5.00001], [0, 0]])


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_arch_inferred_from_the_keys(arch: str) -> None:
    with torch.device("meta"):  # keys only: no memory, no init time
        state = getattr(torchvision.models, arch)().state_dict()
    assert infer_arch(state) == arch


def test_weights_forms(tmp_path: Path) -> None:
    arch = "resnet18"
    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)()
    full = net.state_dict()
    backbone_only = {k: v for k, v in full.items() if not k.startswith("fc.")}
    wrapped = {"state_dict": {f"module.encoder_q.{k}": v for k, v in full.items()}}
    wrapped["state_dict"].update({f"module.encoder_k.{k}": torch.zeros_like(v) for k, v in full.items()})
    for name, obj in [("export.pth", backbone_only), ("torchvision.pth", full), ("wrapped.pth", wrapped)]:
        torch.save(obj, tmp_path / name)
        state = read_backbone_state(tmp_path / name)
        assert infer_arch(state) == arch
        assert not any(k.startswith("fc.") for k in state)
        model, found = load_backbone(tmp_path / name)
        assert found == arch
        # the online copy (encoder_q), never the momentum one (all zeros here), and every tensor loaded
        assert torch.equal(model.layer4[0].conv1.weight, full["layer4.0.conv1.weight"])
    with pytest.raises(WeightsError, match="resnet"):
        load_backbone(tmp_path / "export.pth", arch="resnet34")


def test_orl_model_file_gives_its_online_backbone(tmp_path: Path) -> None:
    from train_helpers import TINY_BYOL_ARGS

    from orl.methods import build_method
    from orl.checkpoint import save_final

    torch.manual_seed(0)
    method = build_method("byol", **TINY_BYOL_ARGS)
    with torch.no_grad():  # make the EMA target differ from the online network
        for p in method.target_backbone.parameters():
            p.zero_()
    save_final(tmp_path / "model.pt", method)
    model, arch = load_backbone(tmp_path / "model.pt")
    assert arch == "resnet18"
    for k, v in method.backbone.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_weights_file_without_resnet_is_refused(tmp_path: Path) -> None:
    torch.save({"weight": torch.zeros(2)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="bad.pth"):
        read_backbone_state(tmp_path / "bad.pth")


# ---------------------------------------------------------------- data readers


def test_coco_multilabel_marks_presence_and_crowd(tmp_path: Path) -> None:
    doc = {
        "images": [{"id": 7, "file_name": "b.jpg"}, {"id": 3, "file_name": "a.jpg"}],
        "categories": [{"id": 2, "name": "dog"}, {"id": 1, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0},
            {"id": 2, "image_id": 3, "category_id": 2, "iscrowd": 1},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    s = read_coco_multilabel(tmp_path / "ann.json", tmp_path)
    assert s.names == ["a.jpg", "b.jpg"] and s.classes == ["cat", "dog"]
    assert s.labels.tolist() == [[NEGATIVE, DIFFICULT], [POSITIVE, NEGATIVE]]


def _voc_xml(objects: list[tuple[str, int]]) -> str:
    objs = "".join(f"<object><name>{n}</name><difficult>{d}</difficult></object>" for n, d in objects)
    return f"<annotation>{objs}</annotation>"


def test_voc_reader_from_xml_and_from_class_files(tmp_path: Path) -> None:
    main = tmp_path / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (tmp_path / "Annotations").mkdir()
    (main / "test.txt").write_text("000002\n000001\n")
    (tmp_path / "Annotations" / "000001.xml").write_text(_voc_xml([("dog", 0), ("cat", 1)]))
    (tmp_path / "Annotations" / "000002.xml").write_text(_voc_xml([("cat", 1), ("cat", 0)]))
    s = read_voc(tmp_path, "test")
    assert s.names == ["000001", "000002"] and s.classes == ["cat", "dog"]
    assert s.labels.tolist() == [[DIFFICULT, POSITIVE], [POSITIVE, NEGATIVE]]
    # The per-class files, when present, are the source (as the authors' create_voc_data_files.py).
    (main / "cat_test.txt").write_text("000001  0\n000002  1\n")
    (main / "dog_test.txt").write_text("000001  1\n000002 -1\n")
    assert read_voc(tmp_path, "test").labels.tolist() == s.labels.tolist()
    assert s.paths[0] == tmp_path / "JPEGImages" / "000001.jpg"


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_svm_and_lowshot_stages_end_to_end(tmp_path: Path) -> None:
    demo = tiny_demo(tmp_path / "demo")
    weights = random_backbone(tmp_path / "export" / "random" / "backbone.pth")
    common = [
        "--weights",
        str(weights),
        "--method-name",
        "random",
        "--data",
        "demo",
        "--demo-root",
        str(demo),
        "--image-size",
        "32",
        "--workers",
        "0",
        "--threads",
        "1",
        "--costs",
        "1,0.0625",
    ]
    out = tmp_path / "bench" / "random"
    lowshot_flags = ["--k-values", "1,2", "--samples", "2"]
    # SVM and low-shot in one process (--lowshot-out) ...
    run_stage(
        bench_svm,
        [
            *common,
            *lowshot_flags,
            "--out",
            str(out / "voc07_svm.json"),
            "--lowshot-out",
            str(out / "voc07_lowshot.json"),
        ],
    )
    doc = json.loads((out / "voc07_svm.json").read_text())
    assert doc["benchmark"] == "voc07_svm" and doc["method"] == "random"
    assert 0.0 <= doc["metrics"]["mAP"]["mean"] <= 100.0 and doc["metrics"]["mAP"]["std"] is None
    assert len(doc["details"]["ap"]) == 10 and doc["settings"]["costs"] == [1.0, 0.0625]
    assert len(doc["weights_sha256"]) == 64 and doc["details"]["features_reused"] is False
    attrs = read_attrs(out / "voc07_features.h5")
    assert attrs["stage"] == bench_features.STAGE and attrs["dim"] == 4 * 512
    combined = json.loads((out / "voc07_lowshot.json").read_text())

    # ... or as a sibling stage, which reuses the cached features and gets the same numbers.
    run_stage(bench_lowshot, [*common, *lowshot_flags, "--out", str(out / "lowshot_alone.json")])
    low = json.loads((out / "lowshot_alone.json").read_text())
    assert low["details"]["features_reused"] is True
    assert set(low["metrics"]) == {"mAP@k=1", "mAP@k=2"} and low["metrics"] == combined["metrics"]
    assert all(m["n"] == 2 and m["std"] is not None for m in low["metrics"].values())

    # Other weights must not reuse that cache.
    other = random_backbone(tmp_path / "other.pth", seed=1)
    run_stage(bench_svm, [*common[:1], str(other), *common[2:], "--out", str(out / "again.json")])
    assert json.loads((out / "again.json").read_text())["details"]["features_reused"] is False
