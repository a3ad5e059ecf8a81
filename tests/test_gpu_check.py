"""benchmarks/gpu/gpu_check.sh --cpu-smoke runs every part of the GPU check on CPU at tiny sizes, in under 2 minutes:
DDP over two ranks, GPU-only parts skipped (never a pass), one markdown table."""

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
    assert "progressive" in report["train"]["images"] and "CMYK" in report["train"]["images"]
    ddp = report["ddp"]
    assert ddp["world_size"] == 2 and ddp["backend"] == "gloo" and ddp["params_equal_after_step"]
    assert report["knn"]["torch_seconds"] >= 0
    assert "identical_neighbours" not in report["knn"] or report["knn"]["identical_neighbours"] == 1.0
    assert report["photometric"]["orl_view1_ms_per_image"] > 0 and report["photometric"]["orl_view2_ms_per_image"] > 0
    roi = report["roi_embed"]
    assert min(roi["fp32_crops_per_s"], roi["bf16_crops_per_s"]) > 0
    assert roi["top_t_pair_overlap"] == 1.0  # CPU: no autocast, the same numbers twice
    assert report["maskrcnn"].get("iterations_per_s", 0) > 0 or "skipped" in report["maskrcnn"].get("status", "")
    # The table: the lines printed last, one row per check; on CPU the GPU-only checks are skipped, never passed.
    printed = proc.stdout.strip().splitlines()
    table = printed[printed.index("| part | status | seconds (budget) | result |"):]
    assert table == report["table"]
    status = {line.split(" | ")[0].strip("| "): line.split(" | ")[1] for line in table[2:]}
    assert list(status) == ["env", "bf16", "train", "sync_free", "decode_race", "ddp", "sync_bn", "nccl", "knn",
                            "photometric", "roi_embed", "maskrcnn", "total"]
    for gpu_only in ("bf16", "sync_free", "decode_race", "sync_bn", "nccl"):
        assert status[gpu_only] == "skipped: needs CUDA", gpu_only
    assert status["ddp"] == "pass" and "world size 2" in next(line for line in table if line.startswith("| ddp |"))
