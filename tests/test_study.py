"""The seeded study's gathering (orl.viz.study): mean and std over seed folders, pair quality, kNN curves, files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from orl.viz.study import gather_benchmarks, gather_knn_curves, seed_folders, to_markdown, write_study


def _seed_folder(root: Path, seed: int, byol: float, orl: float) -> None:
    folder = root / f"seed{seed}"
    (folder / "bench").mkdir(parents=True)
    rows = ["method,benchmark,metric,mean,std,n,settings"]
    for method, value in (("byol", byol), ("orl", orl), ("random", 30.0), ("chance", 10.0)):
        rows.append(f"{method},knn_demo,top1,{value},,1,")
    (folder / "bench" / "summary.csv").write_text("\n".join(rows) + "\n")
    (folder / "mining").mkdir()
    (folder / "mining" / "pair_quality.json").write_text(json.dumps({
        "mined": {"both_cover_object": 0.5, "same_category": 0.2 + seed / 100},
        "random": {"both_cover_object": 0.4, "same_category": 0.1},
        "lift_over_random": {"both_cover_object": 1.25, "same_category": 2.0 + seed / 10},
    }))
    for method, start in (("byol", 30.0), ("orl", 30.0)):
        (folder / "pretrain" / method).mkdir(parents=True)
        (folder / "pretrain" / method / "metrics.csv").write_text(
            "step,epoch,knn_top1,loss\n0,0.0,30.0,\n8,1.0,,1.5\n8,1.0,%s,\n" % (start + seed)
        )


def test_mean_std_over_seeds_and_files(tmp_path: Path) -> None:
    for seed, (byol, orl) in enumerate([(40.0, 44.0), (42.0, 46.0), (44.0, 48.0)]):
        _seed_folder(tmp_path, seed, byol, orl)
    (tmp_path / "seed9").mkdir()  # unfinished seed: no summary.csv, left out
    folders = seed_folders(tmp_path)
    assert list(folders) == [0, 1, 2]
    rows = {(r["method"], r["benchmark"]): r for r in gather_benchmarks(folders)}
    assert rows[("byol", "knn_demo")]["mean"] == pytest.approx(42.0)
    assert rows[("byol", "knn_demo")]["std"] == pytest.approx(np.std([40, 42, 44], ddof=1))
    assert rows[("random", "knn_demo")]["std"] == 0.0 and rows[("orl", "knn_demo")]["n"] == 3
    curves = gather_knn_curves(folders)
    assert curves["byol"][0.0] == [30.0, 30.0, 30.0] and curves["orl"][1.0] == [30.0, 31.0, 32.0]
    paths = write_study(tmp_path)
    md = paths["md"].read_text()
    assert "| knn_demo (top1) | 42.0 ± 2.0 | 46.0 ± 2.0 | 30.0 ± 0.0 | 10.0 ± 0.0 |" in md
    assert "| 2 | 0.500 / 0.400 | 0.220 / 0.100 | 2.20 |" in md
    assert paths["png"].stat().st_size > 10_000
    assert paths["csv"].read_text().splitlines()[1].startswith("byol,knn_demo,top1,42.000,2.000,3,40.000;42.000;44.000")


def test_no_finished_seed_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="seed"):
        write_study(tmp_path)
    assert to_markdown([], {}).startswith("| benchmark")
