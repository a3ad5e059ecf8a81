"""Running the Snakemake workflow from tests: in a temporary working directory, with `orl` on PATH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def import_benchmark_script(group: str, name: str):  # noqa: ANN201 - a script module
    """Import benchmarks/<group>/<name>.py as a module (its sibling imports resolve while it loads)."""
    sys.path.insert(0, str(REPO / "benchmarks" / group))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)



def deep_merge(base: dict, override: dict) -> dict:
    """A copy of `base` with `override` merged in, key by key, at every depth."""
    out = dict(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def demo_config(override: dict | None = None) -> dict:
    """The repo's config.yaml with `override` merged in (a --configfile replaces config.yaml as a whole)."""
    return deep_merge(yaml.safe_load((REPO / "config.yaml").read_text()), override or {})


# The demo's rules at a size that runs in about a minute on 2 cores.
TINY_DEMO = demo_config(
    {
        "demo": {"num_train": 16, "num_val": 8, "image_size": 96},
        "pretrain": {"epochs": 1, "batch_size": 8, "image_size": 32, "workers": 0},
        "features": {"resize": 37, "crop": 32},
        "knn": {"k": 3},
        "box_filter": {"min_size": 16},
        "correspondence": {"crop_size": 32, "image_size": 96},
        "bench": {
            "svm": {"image_size": 32, "k_values": [1, 2], "samples": 2},
            "frozen": {"image_size": 32, "folds": 2},
            "semi": {"epochs": 1},
            "detection": {"iterations": 2, "warmup_iters": 1, "milestones": [1, 2], "train_min_sizes": [64, 96],
                          "test_min_size": 96},
        },
        "figures": {"attention_num": 2, "attention_size": 64},
    }
)


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
