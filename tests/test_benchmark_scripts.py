"""The input-pipeline and training-throughput benchmarks run end to end at tiny sizes and print what they promise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workflow_helpers import import_benchmark_script

pytestmark = pytest.mark.slow


def _run(repo: Path, script: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, script, *args], cwd=repo / "benchmarks" / "speed", env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def test_input_pipeline_prints_one_json_line_per_variant(repo: Path) -> None:
    out = _run(repo, "input_pipeline.py", "--images", "4", "--image-size", "32", "--roi-size", "16",
               "--batch-size", "2", "--device", "cpu")
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert {(r["method"], r["pipeline"], r["decode"]) for r in rows} == {
        (m, p, d) for m in ("byol", "orl") for p, d in (("cpu", "worker"), ("device", "worker"), ("device", "device"))}
    for r in rows:
        assert r["cpu_ms_per_image"] > 0 and r["device_ms_per_image"] >= 0 and r["cores_for_1500_per_s"] > 0
    assert "| orl | device | device |" in out


def test_train_throughput_runs_orl_through_the_device_pipeline(repo: Path) -> None:
    out = _run(repo, "train_throughput.py", "--method", "orl", "--arch", "resnet18", "--image-size", "32",
               "--batch-size", "4", "--steps", "1", "--warmup", "1", "--images", "8", "--workers", "0",
               "--threads", "1", "--skip", "model", "lightly", "--pipeline", "device", "--decode", "device",
               "--method-args", "proj_hidden=64", "proj_dim=32", "pred_hidden=64")
    assert "pipeline device + device decode" in out
    assert "| full step (JPEG + augment, 0 workers) |" in out and "| BYOL full step (0 workers) |" in out


def test_photometric_ops_times_orls_ops(repo: Path) -> None:
    out = _run(repo, "photometric_ops.py", "--batch", "4", "--image-size", "32", "--repeats", "1", "--device", "cpu")
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert {r["view"] for r in rows if r["library"] == "orl"} == {1, 2}
    assert all(r["ms_per_image"] > 0 for r in rows)
    assert "kornia / orl time" in out or "kornia is not importable" in out



def test_box_filter_variants_are_valid_layers_of_the_demo_config(repo: Path) -> None:
    import dataclasses

    import jsonschema
    import yaml

    from orl.data.demo_scenes import World

    script = import_benchmark_script("studies", "box_filter_pairs")
    base = yaml.safe_load((repo / "config.yaml").read_text(encoding="utf-8"))
    schema = yaml.safe_load((repo / "workflow" / "schemas" / "config.schema.yaml").read_text(encoding="utf-8"))
    knobs = {f.name for f in dataclasses.fields(World)}
    for name, text in script.VARIANTS.items():
        layer = yaml.safe_load(text)
        merged = {**base, **{k: {**base.get(k, {}), **v} for k, v in layer.items()}}
        jsonschema.validate(merged, schema)
        assert set(layer.get("demo", {}).get("world", {})) <= knobs, name
        assert merged["box_filter"]["min_size"] in (20, 40), name


def test_semi_budget_fine_tunes_an_exported_backbone(repo: Path, tmp_path: Path) -> None:
    import argparse

    import torch
    import torchvision

    from orl.bench.crops import write_crops
    from orl.data.demo_scenes import generate_demo_dataset

    script = import_benchmark_script("studies", "semi_budget")
    data = tmp_path / "scenes"
    generate_demo_dataset(data, num_train=8, num_val=8, image_size=64)
    crops = tmp_path / "data" / "demo_crops"
    for split in ("train", "val"):
        write_crops(data / "annotations" / f"instances_{split}.json", data / split, crops / split, size=32)
    (tmp_path / "export" / "random").mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "export" / "random" / "backbone.pth")
    args = argparse.Namespace(percent=50.0, epochs=1, batch_size=4, crop_size=32, backbone_lr=0.05, head_lr=0.05,
                              threads=1)
    row = script.fine_tune(tmp_path, "random", 0, args)
    assert row["method"] == "random" and row["epochs"] == 1 and row["seconds"] > 0
    assert 0.0 <= row["top1"] <= 100.0
    assert row["chance"] == pytest.approx(100.0 / len(list((crops / "val").iterdir())))
    assert script.fine_tune(tmp_path, "random", 0, args) == row  # read back, not redone
