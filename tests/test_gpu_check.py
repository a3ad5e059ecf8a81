"""benchmarks/gpu/gpu_check.sh --cpu-smoke runs every part of the GPU check on CPU at tiny sizes, in under 2 minutes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_gpu_check_cpu_smoke(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", str(repo / "benchmarks" / "gpu" / "gpu_check.sh"), "--cpu-smoke", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert time.perf_counter() - t0 < 120
    report = json.loads(out.read_text())
    assert report["smoke"] and report["machine"]
    for method in ("byol", "orl"):
        r = report["train"][method]
        assert min(r["model_only_images_per_s"], r["loader_cpu_images_per_s"], r["loader_device_images_per_s"],
                   r["loader_device_device_decode_images_per_s"]) > 0
    assert report["ddp"]["ok"] and report["ddp"]["backend"] == "gloo"
    assert report["knn"]["torch_seconds"] >= 0
    assert "identical_neighbours" not in report["knn"] or report["knn"]["identical_neighbours"] == 1.0
    assert report["photometric"]["orl_view1_ms_per_image"] > 0 and report["photometric"]["orl_view2_ms_per_image"] > 0
    roi = report["roi_embed"]
    assert min(roi["fp32_crops_per_s"], roi["bf16_crops_per_s"]) > 0
    assert roi["top_t_pair_overlap"] == 1.0  # CPU: no autocast, the same numbers twice
    assert report["maskrcnn"].get("iterations_per_s", 0) > 0 or "skipped" in report["maskrcnn"]
    assert "| train |" in proc.stdout
