"""SIGTERM to Snakemake's process group early in training: a checkpoint and exit 143, though Snakemake removes the
still-empty pretrain/<method>/ folder while the trainer finishes its step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from demo_run import TINY_RUN
from orl import checkpoint as ckpt
from train_helpers import make_images
from workflow_helpers import REPO, deep_merge


@pytest.mark.slow
def test_sigterm_at_the_first_step_under_snakemake_saves_a_checkpoint(tmp_path: Path) -> None:
    images = make_images(tmp_path / "images", n=40)
    config = deep_merge(TINY_RUN, {
        "dataset": {"kind": "folder", "images": str(images)},
        "pretrain": {"epochs": 1000, "batch_size": 2},  # 20 steps per epoch: no metrics row before the signal
    })
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--cores", "1", "results/pretrain/byol/model.pt", "--configfile", str(tmp_path / "config.yaml")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    log = tmp_path / "results" / "logs" / "pretrain_byol.log"
    out_dir = tmp_path / "results" / "pretrain" / "byol"
    try:
        deadline = time.monotonic() + 300
        while not (log.exists() and "byol:" in log.read_text()):  # the progress bar: fit() has started
            assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.1)
        assert not (out_dir / "metrics.csv").exists()
        os.killpg(proc.pid, signal.SIGTERM)  # what Ctrl-C or SLURM does: the whole process group
        proc.communicate(timeout=120)
        deadline = time.monotonic() + 120
        while True:  # the trainer outlives Snakemake while it finishes the step and saves
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            assert time.monotonic() < deadline, "the trainer did not stop"
            time.sleep(0.2)
    finally:
        with_group = proc.poll() is None
        if with_group:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert "interrupted at step" in text and "rerun the same command to resume" in text, text[-2000:]
    latest = ckpt.latest_checkpoint(out_dir / "checkpoints")
    assert latest is not None and ckpt.load_checkpoint(latest)["step"] >= 1
