"""The small tier: its config wires every stage, the crossover arithmetic, and the GPU study's table and smoke mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from workflow_helpers import import_benchmark_script



def test_crossing_finds_the_first_point_above_random_init_and_the_best_margin(repo: Path) -> None:
    tier = import_benchmark_script("studies", "small_tier")
    images = [0.0, 100.0, 200.0, 300.0, 400.0]
    c = tier.crossing(images, [0.0, -6.0, -2.0, 1.5, 0.5])
    assert c == {"crosses_at_images": 300.0, "best_margin": 1.5, "best_at_images": 300.0, "final_margin": 0.5,
                 "lowest_margin": -6.0}
    never = tier.crossing(images, [0.0, -6.0, -2.0, -0.5, -1.0])
    assert never["crosses_at_images"] is None and never["best_margin"] == -0.5 and never["best_at_images"] == 300.0


def test_knn_curve_is_relative_to_the_step0_value_and_counts_scenes(repo: Path, tmp_path: Path) -> None:
    from orl.viz.curves import MetricsError

    tier = import_benchmark_script("studies", "small_tier")
    csv = tmp_path / "metrics.csv"
    csv.write_text("step,epoch,knn_top1,loss\n0,0.0,60.0,\n10,0.5,,3.0\n20,1.0,55.5,2.0\n40,2.0,62.0,1.5\n")
    curve = tier.knn_curve(csv, images_per_step=64)
    assert curve == {"images": [0.0, 1280.0, 2560.0], "top1": [60.0, 55.5, 62.0], "margin": [0.0, -4.5, 2.0]}
    csv.write_text("step,epoch,knn_top1,loss\n10,0.5,,3.0\n20,1.0,55.5,2.0\n")
    with pytest.raises(MetricsError, match="no step-0 kNN value"):
        tier.knn_curve(csv, images_per_step=64)


def test_small_tier_runs_every_stage_and_method_through_snakemake(repo: Path, tmp_path: Path) -> None:
    tier = import_benchmark_script("studies", "small_tier")
    layers = tier.run_layers(tmp_path, seed=3)
    assert (tmp_path / "seed3.yaml").read_text().startswith(f"results: '{tmp_path / 'seed3'}'")
    cmd = [*tier.demo_snakemake(layers, 2, dry_run=True), "-p"]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for rule in ("pretrain_byol", "pretrain_simclr", "pretrain_moco_v2", "pretrain_orl", "pretrain_orl_no_inter",
                 "export_random", "mine_pairs", "gather_correspondence"):
        assert f"rule {rule}:" in proc.stdout, rule
    # 32 px views with the monitor on every epoch, at the tier's world size.
    assert "--image-size 32" in proc.stdout and "--knn-every 1" in proc.stdout
    assert "--num-train 2048" in proc.stdout and "--num-val 1024" in proc.stdout


def test_gpu_study_table_gives_per_seed_margins_over_random_init(repo: Path) -> None:
    study = import_benchmark_script("gpu", "gpu_study")
    per_seed = {
        0: {"random": {"knn_demo": 60.0, "linear_demo": 70.0}, "byol": {"knn_demo": 72.0, "linear_demo": 74.0},
            "orl": {"knn_demo": 75.0, "linear_demo": 71.0}},
        1: {"random": {"knn_demo": 62.0, "linear_demo": 70.0}, "byol": {"knn_demo": 70.0, "linear_demo": 76.0},
            "orl": {"knn_demo": 79.0, "linear_demo": 73.0}},
    }
    text = study.table(per_seed, {0: 3.0, 1: 4.0})
    assert "| byol | 71.0 ± 1.4 | 10.0 ± 2.8 | 75.0 ± 1.4 | 5.0 ± 1.4 | - |" in text
    assert "| orl | 77.0 ± 2.8 | 16.0 ± 1.4 | 72.0 ± 1.4 | 2.0 ± 1.4 | 3.50 ± 0.71 |" in text
    assert "| random | 61.0 ± 1.4 | - |" in text


def test_gpu_study_layer_scales_the_cpu_epochs(repo: Path, tmp_path: Path) -> None:
    import json

    study = import_benchmark_script("gpu", "gpu_study")
    layer = json.loads(study.gpu_layer(2, tmp_path / "seed2", scale=20))
    assert layer["pretrain"]["epochs"] == 200 and layer["pretrain"]["seed"] == 2 and layer["pretrain"]["gpus"] == 1
    assert layer["baselines"] == [] and layer["results"] == str(tmp_path / "seed2")


@pytest.mark.slow
def test_gpu_study_smoke_mode_prints_the_table(repo: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "benchmarks/gpu/gpu_study.py", "--smoke", "--root", str(tmp_path)],
                          cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for method in ("random", "byol", "orl"):
        assert f"| {method} | " in proc.stdout
    assert (tmp_path / "gpu_study.json").is_file() and "CPU smoke" in proc.stdout
