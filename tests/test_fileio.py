"""Result files: the umask's permissions, and one-line errors naming the file when the disk is full."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from orl.artifacts import write_artifact
from orl.bench.results import write_result
from orl.checkpoint import atomic_save
from orl.fileio import file_mode


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        assert file_mode() == 0o666 & ~umask
        paths = [
            write_artifact(tmp_path / "a.h5", stage="s", image_list_digest="d", params={}, arrays={"x": np.ones(3)}),
            atomic_save({"w": torch.ones(2)}, tmp_path / "model.pt"),
            write_result(tmp_path / "r.json", method="m", benchmark="b", metrics={}, settings={}, weights=tmp_path / "model.pt",
                         weights_sha256="0"),
        ]
    finally:
        os.umask(previous)
    for path in paths:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


# A file-size limit makes every write past 64 KiB fail with EFBIG, as a full disk fails with ENOSPC.
_FULL_DISK = """
import resource, signal, sys
import numpy as np, torch
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
from orl.artifacts import write_artifact
from orl.checkpoint import atomic_save
what, out = sys.argv[1], sys.argv[2]
try:
    if what == "artifact":
        write_artifact(out, stage="s", image_list_digest="d", params={},
                       arrays={"x": np.random.default_rng(0).random((200, 1000))})
    else:
        atomic_save({"w": torch.rand(100000)}, out)
except OSError as e:
    print(type(e).__name__, e)
"""


@pytest.mark.parametrize("what", ["artifact", "checkpoint"])
def test_full_disk_gives_one_line_naming_the_file_and_cause(tmp_path: Path, what: str) -> None:
    out = tmp_path / "out file"
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK, what, str(out)], capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.strip() == f"WriteError cannot write {out}: File too large (errno 27)", proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "HDF5" not in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []  # no temp file left behind


def test_write_result_json_round_trips(tmp_path: Path) -> None:
    path = write_result(tmp_path / "r.json", method="m", benchmark="b", metrics={}, settings={},
                        weights=tmp_path / "w", weights_sha256="0")
    assert json.loads(path.read_text())["method"] == "m"
