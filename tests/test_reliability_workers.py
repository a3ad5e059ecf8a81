"""A DataLoader worker's error ends the run at once with its one-line error; stop signals still reach the saver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from train_helpers import TINY_BYOL_ARGS, TINY_CLI_ARGS, make_index

from orl import checkpoint as ckpt
from orl.data.loader_workers import worker_error_line
from orl.methods import build_method


def _run(cmd: list[str], timeout: float) -> tuple[int | None, str, float]:
    """(exit status or None when it had to be killed, stderr, seconds) of a command in its own process group."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
        return proc.returncode, err.decode(), time.monotonic() - t0
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        return None, err.decode(), time.monotonic() - t0


@pytest.mark.slow
def test_pretrain_with_a_missing_image_and_a_worker_exits_with_its_error(tmp_path: Path) -> None:
    _, index_path = make_index(tmp_path)
    (tmp_path / "images" / "img_003.jpg").unlink()  # removed after indexing
    cmd = [sys.executable, "-m", "orl.cli", "pretrain", "--method", "byol", "--index", str(index_path),
           "--out", str(tmp_path / "run" / "model.pt"), "--epochs", "2", "--batch-size", "4", "--workers", "1",
           *TINY_CLI_ARGS]
    code, err, seconds = _run(cmd, timeout=90)
    assert code == 1, f"exit {code} after {seconds:.0f} s (None: hung in the exit, waiting for the worker)\n{err[-2000:]}"
    last = err.strip().splitlines()[-1]
    assert last.startswith("orl pretrain: error: ImageReadError: ") and "img_003.jpg" in last, last
    assert "Traceback" not in err


@pytest.mark.slow
def test_features_with_workers_reports_a_missing_image_in_one_line(tmp_path: Path) -> None:
    _, index_path = make_index(tmp_path)
    model = ckpt.save_final(tmp_path / "model.pt", build_method("byol", **TINY_BYOL_ARGS))
    (tmp_path / "images" / "img_005.jpg").unlink()
    cmd = [sys.executable, "-m", "orl.cli", "features", "--model", str(model), "--index", str(index_path),
           "--out", str(tmp_path / "features.h5"), "--resize", "40", "--crop", "32", "--batch-size", "2",
           "--workers", "2", "--device", "cpu"]
    code, err, seconds = _run(cmd, timeout=90)
    assert code == 1, f"exit {code} after {seconds:.0f} s\n{err[-2000:]}"
    lines = err.strip().splitlines()
    assert lines[-1].startswith("orl features: error: ImageReadError: ") and "img_005.jpg" in lines[-1], err[-2000:]
    assert "Traceback" not in err and len(lines) < 5, err[-2000:]


def test_signal_ignoring_workers_do_not_outlive_an_error(tmp_path: Path) -> None:
    """The bare pattern every loader uses: a worker that ignores SIGTERM and raises must not hang the exit."""
    script = textwrap.dedent("""
        import torch
        from torch.utils.data import DataLoader, Dataset
        from orl.data.loader_workers import ignore_stop_signals, stop_workers_on_error

        class Broken(Dataset):
            def __len__(self):
                return 4
            def __getitem__(self, i):
                raise OSError(f"image {i} is gone")

        loader = DataLoader(Broken(), batch_size=2, num_workers=1, persistent_workers=True,
                            worker_init_fn=ignore_stop_signals)
        with stop_workers_on_error(loader) as batches:
            next(batches)
    """)
    code, err, seconds = _run([sys.executable, "-c", script], timeout=60)
    assert code == 1, f"exit {code} after {seconds:.0f} s\n{err[-2000:]}"
    assert "image 0 is gone" in err


def test_worker_error_line_is_the_workers_own_last_line() -> None:
    wrapped = ("Caught ImageReadError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\n    g()\norl.data.images.ImageReadError: /d/a.jpg: cannot decode image\n')
    assert worker_error_line(RuntimeError(wrapped)) == "ImageReadError: /d/a.jpg: cannot decode image"
    assert worker_error_line(ValueError("plain error")) is None
