"""Process setup for training: torch.distributed from torchrun's environment, device, threads, seeds, determinism."""

from __future__ import annotations

import datetime as _dt
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: global rank, local rank (GPU on its node), world size, device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        """True when more than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs and writes files."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def choose_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' -> this process's GPU when CUDA is available, else CPU; 'cpu' / 'cuda' force one."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but CUDA is not available")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def init_distributed(device: str = "auto", timeout_min: float = 30.0) -> Runtime:
    """Join the process group described by torchrun's env vars (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...).

    Without them (plain `python` / `orl`), returns a single-process runtime. NCCL on GPU, gloo on CPU.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    dev = choose_device(device, local_rank)
    if world_size > 1 and not tdist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        tdist.init_process_group(backend=backend, timeout=_dt.timedelta(minutes=timeout_min), **kwargs)
    return Runtime(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def shutdown_distributed() -> None:
    """Leave the process group (no-op in a single process)."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def set_threads(threads: int | None) -> None:
    """Intra-op CPU threads of this process (None leaves torch's default)."""
    if threads is not None and threads > 0:
        torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_determinism(device: torch.device) -> None:
    """CPU: deterministic algorithms (same seed -> same weights). GPU: cuDNN autotuning and TF32 for speed."""
    if device.type == "cpu":
        # warn_only: an op without a deterministic CPU kernel warns instead of aborting a long run.
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
