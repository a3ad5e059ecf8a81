"""Shared test setup: one torch thread (CI has 2 cores), paths to the repo and the optional shared COCO sample."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
# A failing `scontrol` first on PATH spares every local Snakemake start the SLURM plugin's ~9 s probe of a
# controller that is not running (tests/no_slurm/scontrol says why); the cluster tests take it off again.
NO_SLURM_BIN = REPO / "tests" / "no_slurm"
if str(NO_SLURM_BIN) not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = f"{NO_SLURM_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
COCO128 = REPO.parent / "shared" / "data" / "coco128"


def pytest_configure(config: pytest.Config) -> None:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # torch-free tests still run
        pass


@pytest.fixture
def repo() -> Path:
    """The repository root."""
    return REPO


@pytest.fixture
def coco128() -> Path:
    """../shared/data/coco128 (128 real COCO photos); the test is skipped where it is absent."""
    if not (COCO128 / "annotations" / "instances_train2017.json").is_file():
        pytest.skip(f"{COCO128} not present (it exists only on the project's own machines)")
    return COCO128
