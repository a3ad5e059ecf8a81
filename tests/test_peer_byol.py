"""The peer BYOL study runs orl's and lightly's BYOL in its smoke mode, from the same init, and resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightly")
pytestmark = pytest.mark.slow


def test_peer_byol_smoke_trains_both_from_the_same_init_and_skips_finished_runs(repo: Path, tmp_path: Path) -> None:
    out, figure = tmp_path / "peer.jsonl", tmp_path / "peer.png"
    cmd = [sys.executable, str(repo / "benchmarks" / "studies" / "peer_byol.py"), "--smoke", "--epochs", "1",
           "--seeds", "0", "--threads", "1", "--root", str(tmp_path / "work"), "--out", str(out),
           "--figure", str(figure)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["impl"], r["recipe"]) for r in records} == {("orl", "own"), ("lightly", "own"), ("lightly", "shared"),
                                                                 ("lightly", "shared_x4")}
    for r in records:
        assert r["steps"] == [0, 4] and len(r["knn_top1"]) == 2  # 16 scenes / batch 4: one probe per epoch
        assert all(0.0 <= v <= 100.0 for v in r["knn_top1"]) and r["chance"] == 100.0 / r["classes"]
    # Same torchvision init under the same seed: the random-init probe is the same number for every run.
    assert len({r["knn_top1"][0] for r in records}) == 1
    by_recipe = {(r["impl"], r["recipe"]): r["optim"] for r in records}
    assert by_recipe[("lightly", "own")]["lr"] == 0.06
    assert by_recipe[("lightly", "shared")]["peak_lr"] == pytest.approx(by_recipe[("orl", "own")]["peak_lr"])
    scaled, orl = by_recipe[("lightly", "shared_x4")], by_recipe[("orl", "own")]
    assert scaled["peak_lr"] == pytest.approx(4 * orl["peak_lr"]) and scaled["weight_decay"] == orl["weight_decay"] / 4
    assert "| lightly BYOL, orl recipe | 1 | 4 |" in proc.stdout and figure.stat().st_size > 0

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(out.read_text().splitlines()) == 4  # finished runs are skipped, not appended again
