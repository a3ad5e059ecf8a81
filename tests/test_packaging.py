"""The GPU install resolves exactly one faiss: faiss-cpu and faiss-gpu both own the `faiss` module, and pip would
keep whichever it unpacked last. Resolved with pip's own resolver (`pip install --dry-run --report`), from the
package index; skipped when the index cannot be reached."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from workflow_helpers import REPO

pytestmark = pytest.mark.slow

# pip's words for an index it cannot reach (no network, proxy, DNS).
OFFLINE = re.compile(r"NewConnectionError|ConnectionError|Temporary failure in name resolution|Network is unreachable"
                     r"|No matching distribution found for (torch|setuptools)|ProxyError|Max retries exceeded")


def faiss_names(names: list[str]) -> set[str]:
    """The faiss distributions among package names."""
    return {n for n in names if n.lower().replace("_", "-").startswith("faiss")}


def test_gpu_install_resolves_one_faiss(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    # --ignore-installed: the whole set a fresh `pip install -e '.[gpu]'` would install, not what this venv lacks.
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report",
           str(report), "-e", f"{REPO}[gpu]"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and OFFLINE.search(proc.stderr + proc.stdout):
        pytest.skip(f"the package index is not reachable: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    install = json.loads(report.read_text())["install"]
    resolved = {item["metadata"]["name"]: item for item in install}
    assert faiss_names(list(resolved)) == {"faiss-gpu"}, sorted(resolved)
    # faiss-gpu's CUDA libraries come as pip packages of one CUDA major (the cu12 family, see docs/gpu.md).
    cuda_majors = {m.group(1) for n in resolved if (m := re.match(r"nvidia-.*-cu(\d+)$", n))}
    assert "12" in cuda_majors

    # The other installs, from the same report's metadata of orl itself: `.[cpu]` (make install) gets faiss-cpu
    # alone, and the bare package no faiss (the kNN stage's torch route needs none).
    orl = next(item for item in install if item["metadata"]["name"] == "orl")
    requires = [Requirement(r) for r in orl["metadata"]["requires_dist"]]

    def faiss_for(*extras: str) -> set[str]:
        envs = [{"extra": e} for e in extras] or [{"extra": ""}]
        return faiss_names([r.name for r in requires if r.marker is None or any(r.marker.evaluate(e) for e in envs)])

    assert faiss_for() == set()
    assert faiss_for("cpu") == {"faiss-cpu"} and faiss_for("gpu") == {"faiss-gpu"}
    assert faiss_for("test") == set()  # CI's `make install` adds cpu explicitly, never through test
