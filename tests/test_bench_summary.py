"""The results table: one row per method x benchmark x metric, missing std, other benchmarks' JSON, result files."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from bench_helpers import run_stage

from orl.bench.results import metric, read_result, write_result
from orl.bench.summary import collect_rows, find_results, to_markdown, write_summary
from orl.stages import bench_summary

METHODS = ("byol", "orl", "random")


def _write_all(root: Path) -> dict[tuple[str, str], list[str]]:
    """Result files of every method for three benchmarks; returns the metric names expected per file."""
    expected = {}
    for i, method in enumerate(METHODS):
        common = dict(
            method=method,
            settings={"arch": "resnet18", "costs": [1.0]},
            weights=f"{method}.pth",
            weights_sha256="0" * 64,
        )
        write_result(
            root / method / "voc07_svm.json", benchmark="voc07_svm", metrics={"mAP": metric(40.0 + i)}, **common
        )
        lowshot = {f"mAP@k={k}": metric([30.0 + k, 31.0 + k, 29.0 + k]) for k in (1, 2, 4)}
        write_result(root / method / "voc07_lowshot.json", benchmark="voc07_lowshot", metrics=lowshot, **common)
        write_result(
            root / method / "linear_demo.json",
            benchmark="linear_demo",
            metrics={"top1": metric(20.0), "top5": metric(60.0)},
            **common,
        )
        expected[(method, "voc07_svm")] = ["mAP"]
        expected[(method, "voc07_lowshot")] = list(lowshot)
        expected[(method, "linear_demo")] = ["top1", "top5"]
    return expected


def test_a_row_for_every_method_benchmark_metric(tmp_path: Path) -> None:
    expected = _write_all(tmp_path)
    rows = collect_rows(find_results(tmp_path))
    got: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        got.setdefault((r["method"], r["benchmark"]), []).append(r["metric"])
    assert got == expected
    assert len(rows) == sum(len(v) for v in expected.values()) == 3 * (1 + 3 + 2)
    low = next(r for r in rows if r["metric"] == "mAP@k=2" and r["method"] == "orl")
    assert low["mean"] == pytest.approx(32.0) and low["std"] == pytest.approx(math.sqrt(2 / 3)) and low["n"] == 3
    assert "arch=resnet18" in low["settings"] and "costs" not in low["settings"]


def test_missing_std_is_an_empty_cell_and_no_plus_minus(tmp_path: Path) -> None:
    _write_all(tmp_path)
    # A hand-written file: a bare number, a mapping without std, and a std of null.
    (tmp_path / "byol" / "extra.json").write_text(
        json.dumps(
            {
                "method": "byol",
                "benchmark": "extra",
                "metrics": {"a": 1.5, "b": {"mean": 2.0}, "c": {"mean": 3.0, "std": None}},
            }
        )
    )
    write_summary(find_results(tmp_path), tmp_path / "summary.csv", tmp_path / "summary.md")
    table = list(csv.DictReader(io.StringIO((tmp_path / "summary.csv").read_text())))
    extra = [r for r in table if r["benchmark"] == "extra"]
    assert [(r["metric"], r["mean"], r["std"], r["n"]) for r in extra] == [
        ("a", "1.5", "", "1"),
        ("b", "2.0", "", ""),
        ("c", "3.0", "", ""),
    ]
    svm = next(r for r in table if r["benchmark"] == "voc07_svm" and r["method"] == "orl")
    assert svm["std"] == "" and float(svm["mean"]) == 41.0
    md = (tmp_path / "summary.md").read_text()
    assert "| byol | extra | a | 1.50 | 1 |" in md
    assert "| orl | voc07_svm | mAP | 41.00 | 1 |" in md and "± 0.82" in md  # lowshot rows keep their std


def test_other_benchmarks_json_without_metrics_entry(tmp_path: Path) -> None:
    # The detection benchmark writes {"bbox": {...}, "segm": {...}, ...}: still one row per number.
    doc = {
        "bbox": {"AP": 0.1, "AP50": 0.2},
        "segm": {"AP": 0.05},
        "all_metrics": {"bbox": {"APs": 0.0}},
        "method": "orl",
        "settings": {"iterations": 3},
        "ap_scale": "fraction",
        "seconds": {"train": 1.0},
    }
    (tmp_path / "orl").mkdir()
    (tmp_path / "orl" / "detection.json").write_text(json.dumps(doc))
    rows = collect_rows([tmp_path / "orl" / "detection.json"])
    assert [(r["benchmark"], r["metric"], r["mean"]) for r in rows] == [
        ("detection", "bbox/AP", 0.1),
        ("detection", "bbox/AP50", 0.2),
        ("detection", "segm/AP", 0.05),
    ]
    assert "ap_scale=fraction" in rows[0]["settings"]


def test_markdown_escapes_pipes_and_shortens_settings() -> None:
    row = {"method": "m", "benchmark": "b", "metric": "x", "mean": 1.0, "std": 0.5, "n": 2, "settings": "a|b" * 200}
    line = to_markdown([row]).splitlines()[2]
    assert "1.00 ± 0.50" in line and "a\\|b" in line and line.endswith("… |")


def test_result_file_nan_becomes_null_and_reads_back(tmp_path: Path) -> None:
    path = write_result(
        tmp_path / "r.json",
        method="m",
        benchmark="b",
        metrics={"mAP": metric(float("nan"))},
        settings={},
        weights="w",
        weights_sha256="s",
        details={"ap": [float("nan"), 0.5]},
    )
    doc = read_result(path)
    assert doc["metrics"]["mAP"]["mean"] is None and doc["details"]["ap"] == [None, 0.5]
    assert metric([1.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 2} and metric([2.0])["std"] is None
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        read_result(tmp_path / "bad.json")


def test_summary_stage(tmp_path: Path) -> None:
    _write_all(tmp_path / "bench")
    (tmp_path / "bench" / "demo_crops").mkdir()  # a data manifest in the bench folder is not a result
    (tmp_path / "bench" / "demo_crops" / "crops.json").write_text(json.dumps({"size": 32, "counts": {"train": {}}}))
    outs = ["--out-csv", str(tmp_path / "bench" / "summary.csv"), "--out-md", str(tmp_path / "bench" / "summary.md")]
    with pytest.warns(UserWarning, match="crops.json"):
        run_stage(bench_summary, ["--root", str(tmp_path / "bench"), *outs])
    assert len((tmp_path / "bench" / "summary.csv").read_text().splitlines()) == 1 + 18
    # A file named explicitly must be a result.
    with pytest.raises(ValueError, match="not a benchmark result"):
        run_stage(bench_summary, ["--inputs", str(tmp_path / "bench" / "demo_crops" / "crops.json"), *outs])
    with pytest.raises(ValueError, match="no result files"):
        run_stage(bench_summary, ["--root", str(tmp_path / "empty"), *outs])


def test_every_benchmark_group_ends_with_random_init_and_chance(tmp_path: Path) -> None:
    from orl.bench.results import average_precision_chance, topk_chance

    for i, method in enumerate(("orl", "byol", "random")):
        common = dict(method=method, settings={}, weights="w", weights_sha256="s")
        write_result(tmp_path / method / "knn_demo.json", benchmark="knn_demo", metrics={"top1": metric(30.0 + i)},
                     chance={"top1": topk_chance(10)}, chance_rule="100 / classes", **common)
        labels = np.array([[1, -1], [-1, 1], [-1, -1], [0, 1]])  # positive rates 1/3 and 2/4
        write_result(tmp_path / method / "voc07_svm.json", benchmark="voc07_svm", metrics={"mAP": metric(50.0 + i)},
                     chance={"mAP": average_precision_chance(labels)}, **common)
    det = {"bbox": {"AP": 0.1}, "method": "orl", "chance": {"bbox": {"AP": 0.0}}, "chance_rule": "0"}
    (tmp_path / "orl" / "detection.json").write_text(json.dumps(det))
    rows = collect_rows(find_results(tmp_path))
    order = [(r["benchmark"], r["method"]) for r in rows]
    assert order == [
        ("detection", "orl"), ("detection", "chance"),
        ("knn_demo", "byol"), ("knn_demo", "orl"), ("knn_demo", "random"), ("knn_demo", "chance"),
        ("voc07_svm", "byol"), ("voc07_svm", "orl"), ("voc07_svm", "random"), ("voc07_svm", "chance"),
    ]
    chance = {(r["benchmark"], r["metric"]): r for r in rows if r["method"] == "chance"}
    assert chance[("knn_demo", "top1")]["mean"] == pytest.approx(10.0)
    assert chance[("knn_demo", "top1")]["settings"] == "chance: 100 / classes"
    assert chance[("voc07_svm", "mAP")]["mean"] == pytest.approx(100 * (1 / 3 + 2 / 4) / 2)
    assert chance[("detection", "bbox/AP")]["mean"] == 0.0
    assert topk_chance(10, 5) == 50.0 and topk_chance(3, 5) == 100.0
    md = to_markdown(rows)
    assert "| random | knn_demo | top1 | 32.00 |" in md and "| chance | knn_demo | top1 | 10.00 |" in md
