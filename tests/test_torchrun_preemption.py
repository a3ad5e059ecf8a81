"""A SIGTERM to torchrun during a slow checkpoint write still leaves a complete checkpoint.

torchrun forwards SIGTERM to its workers and kills them after its shutdown timeout (30 s by default), while SLURM
gives a training job STOP_SIGNAL_LEAD_S (300 s) to finish the step and write a ~0.45 GB checkpoint. The workflow's
launcher must pass that lead as --shutdown-timeout. Scaled down here: torchrun's default timeout becomes 2 s
(TORCH_ELASTIC_SHUTDOWN_TIMEOUT, which an explicit --shutdown-timeout overrides) and the save takes 6 s.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import slurm_helpers as sh
from orl import checkpoint as ckpt
from train_helpers import TINY_CLI_ARGS, make_index
from workflow_helpers import demo_config

pytestmark = pytest.mark.slow

SLOW_SAVE_S = 6
# The trainer's checkpoint write made slow; everything else is `orl` itself.
WRAPPER = f"""
import sys, time
from orl import checkpoint as ckpt

_save = ckpt.save_checkpoint

def slow_save(path, state):
    time.sleep({SLOW_SAVE_S})
    return _save(path, state)

ckpt.save_checkpoint = slow_save
from orl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def launcher_flags(tmp_path: Path) -> list[str]:
    """torchrun's options in the workflow's command for a 2-process CPU pretraining (from a dry run)."""
    config = demo_config({"pretrain": {"gpus": 0, "processes": 2, "threads": 2}})
    cmd = sh.snakemake_cmd(tmp_path / "dry", config, "-n", "-p", "--cores", "2", "results/pretrain/byol/model.pt",
                           limit=120)
    proc = subprocess.run(cmd, env=sh.env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shell = next(line for line in proc.stdout.splitlines() if " pretrain --method byol " in line)
    m = re.search(r"torchrun (.*?) --no-python orl pretrain ", shell)
    assert m, shell
    return m.group(1).split()


def test_sigterm_to_torchrun_during_a_slow_save_leaves_a_complete_checkpoint(tmp_path: Path) -> None:
    flags = launcher_flags(tmp_path)
    _, index_path = make_index(tmp_path, n=8)
    wrapper = tmp_path / "slow_save_orl.py"
    wrapper.write_text(WRAPPER)
    out = tmp_path / "run" / "model.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", *flags, str(wrapper), "pretrain", "--method", "byol",
           "--index", str(index_path), "--out", str(out), "--epochs", "200", "--batch-size", "2",
           "--warmup-epochs", "0", "--workers", "0", "--log-every", "1", "--checkpoint-every", "1000",
           "--device", "cpu", *TINY_CLI_ARGS]
    env = {"GLOO_SOCKET_IFNAME": "lo", **os.environ, "OMP_NUM_THREADS": "1", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "2"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        metrics = out.parent / "metrics.csv"
        deadline = time.monotonic() + 120
        while not metrics.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert metrics.exists(), proc.communicate(timeout=30)[0][-3000:] if proc.poll() is not None else "no step"
        proc.send_signal(signal.SIGTERM)  # what SLURM's --signal=TERM@lead sends to the job's task
        log, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    saved = ckpt.latest_checkpoint(out.parent / "checkpoints")
    assert saved is not None and ckpt.is_valid_checkpoint(saved), log[-3000:]
    assert proc.returncode != 0 and not out.exists()  # stopped, to be resumed by the retry
