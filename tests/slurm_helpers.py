"""The local single-node SLURM of the cluster tests: start it (or find it up), run Snakemake against it, read jobs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
START = REPO / "tools" / "local_slurm" / "start.sh"
STOP = REPO / "tools" / "local_slurm" / "stop.sh"
LOCAL_PROFILE = REPO / "profiles" / "slurm-local"
# CI (.ci/run) sets this: a cluster that cannot start fails the tests instead of skipping them.
REQUIRE_ENV = "ORL_REQUIRE_SLURM"

SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+)")
NO_SLURM_BIN = REPO / "tests" / "no_slurm"  # tests/conftest.py's stand-in scontrol, kept off the cluster tests


def real_slurm_env() -> dict[str, str]:
    """os.environ without the tests' stand-in scontrol on PATH: the cluster tests talk to the real SLURM."""
    out = dict(os.environ)
    out["PATH"] = os.pathsep.join(p for p in out.get("PATH", "").split(os.pathsep) if p != str(NO_SLURM_BIN))
    return out


def slurm_is_up() -> bool:
    """True when a controller answers and this host's node can take jobs."""
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20, env=real_slurm_env())
        state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20,
                               env=real_slurm_env())
    except (OSError, subprocess.TimeoutExpired):
        return False
    return " is UP" in ping.stdout and state.stdout.split()[:1] in (["idle"], ["mixed"], ["allocated"])


def start_local_slurm() -> tuple[bool, str]:
    """Run tools/local_slurm/start.sh (idempotent); returns (ok, its output)."""
    try:
        proc = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=900, env=real_slurm_env())
    except subprocess.TimeoutExpired as e:
        return False, f"timed out after {e.timeout} s"
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


def stop_local_slurm() -> str:
    """Stop the daemons start.sh started (by PID file)."""
    proc = subprocess.run(["bash", str(STOP)], capture_output=True, text=True, timeout=120, env=real_slurm_env())
    return (proc.stdout + proc.stderr).strip()


def env() -> dict[str, str]:
    """The environment of Snakemake and, through sbatch --export=ALL, of every job: this venv's `orl` first on PATH."""
    out = real_slurm_env()
    out["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{out.get('PATH', '')}"
    out.setdefault("OMP_NUM_THREADS", "1")
    return out


def snakemake_cmd(workdir: Path, config: dict, *args: str, limit: int = 300) -> list[str]:
    """`timeout <limit> python -m snakemake` on the repo's Snakefile in `workdir` with `config` (a full config)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "test-config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    # timeout sends TERM first, so Snakemake cancels its SLURM jobs before it goes (the cluster tests require it).
    guard = ["timeout", "--kill-after=30", str(limit)] if shutil.which("timeout") else []
    return [*guard, sys.executable, "-m", "snakemake",
            "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--configfile", str(cfg), *args]


def job_ids(log: str) -> list[str]:
    """SLURM job ids of the jobs a Snakemake log says it submitted, in order."""
    return SUBMITTED.findall(log)


def job_states(ids: list[str]) -> dict[str, tuple[str, str]]:
    """id -> (state, comment) from squeue, finished jobs included (the local cluster keeps them MinJobAge=600 s)."""
    if not ids:
        return {}
    proc = subprocess.run(["squeue", "-h", "--states=all", "-j", ",".join(ids), "-o", "%i|%T|%k"],
                          capture_output=True, text=True, timeout=30)
    rows = (line.split("|") for line in proc.stdout.splitlines() if line.count("|") == 2)
    return {i: (state, comment) for i, state, comment in rows}


def cancel(ids: list[str]) -> None:
    """scancel the given jobs (cleanup after a failed test; finished ids are ignored by SLURM)."""
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30)
