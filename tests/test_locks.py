"""Two runs writing the same output: the second stops at once with one line naming the lock and its holder."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from orl.locks import OutputLockedError, lock_path, output_lock, stage_output


def _orl_index(images: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orl.cli", "index", "--images", str(images), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)


def test_second_writer_of_the_same_output_is_refused(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "a.png")
    out = tmp_path / "results" / "index" / "images.h5"
    with output_lock(out):
        proc = _orl_index(images, out)
        with pytest.raises(OutputLockedError, match="held by host"):
            with output_lock(out):
                pass
    assert proc.returncode == 1 and not out.exists()
    assert proc.stderr.strip() == (
        f"orl index: error: {out} is being written by another run: {lock_path(out)} is held by host "
        f"{socket.gethostname()} pid {os.getpid()}; wait for it or stop it"
    )
    assert _orl_index(images, out).returncode == 0  # released when the holder is done


def test_lock_of_a_killed_run_does_not_block(tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from orl.locks import output_lock\n"
         "with output_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(600)", str(out)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputLockedError, match=f"pid {holder.pid}"):
            with output_lock(out):
                pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        deadline = time.monotonic() + 10
        with output_lock(out):
            assert time.monotonic() < deadline
    finally:
        if holder.poll() is None:
            holder.kill()


def test_torchrun_ranks_other_than_0_do_not_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orl.cli import _output_lock

    class Args:
        out = tmp_path / "model.pt"

    monkeypatch.setenv("RANK", "1")
    with output_lock(Args.out), _output_lock(Args()):
        pass  # rank 1 runs beside rank 0, which holds the lock


def test_a_stage_with_several_outputs_locks_the_first() -> None:
    """bench-semi's --out takes one path per percent: the lock goes beside the first, never on the list."""
    args = argparse.Namespace(out=[Path("/r/bench/semi_1pct.json"), Path("/r/bench/semi_10pct.json")])
    assert stage_output(args) == Path("/r/bench/semi_1pct.json")
    assert stage_output(argparse.Namespace(out=[])) is None
