"""The input-pipeline and training-throughput benchmarks run end to end at tiny sizes and print what they promise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _run(repo: Path, script: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, script, *args], cwd=repo / "benchmarks", env=env, capture_output=True,
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
