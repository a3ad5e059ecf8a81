"""Running the Snakemake workflow from tests: in a temporary working directory, with `orl` on PATH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# Small enough for seconds on 2 cores; the rules are the same as the demo's.
TINY_DEMO = {"demo": {"num_train": 16, "num_val": 8, "image_size": 96}}


def snakemake(workdir: Path, *args: str, config: dict | None = None, timeout: int = 1200) -> subprocess.CompletedProcess:
    """Run snakemake on the repo's Snakefile inside `workdir`; returns the finished process (never raises)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)]
    if config:
        cfg = workdir / "test-config.yaml"
        cfg.write_text(yaml.safe_dump(config))
        cmd += ["--configfile", str(cfg)]
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run(cmd + list(args), cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)


def check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """Fail with Snakemake's own output when it did not succeed."""
    assert proc.returncode == 0, f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc
