"""Process setup for every stage that trains (pretraining, detection): torch.distributed from torchrun's environment,
device, threads, seeds, determinism, and the check that a GPU job sees the GPUs it asked for."""

from __future__ import annotations

import datetime as _dt
import os
import random
import sys
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
    """CPU: deterministic algorithms (same seed -> same weights). GPU: cuDNN autotuning and TF32 for speed.

    TF32 is for training's backbone only: the contrastive logits (orl.methods.losses) and every stage whose
    precision is fp32 run inside orl.precision.ieee_fp32().
    """
    if device.type == "cpu":
        # warn_only: an op without a deterministic CPU kernel warns instead of aborting a long run.
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


# The workflow's launcher sets this to the GPUs per node the rule asked SLURM for (its `gpu` resource).
EXPECT_GPUS_ENV = "ORL_EXPECT_GPUS"


def expected_gpus() -> int | None:
    """GPUs per node this process's job asked for: $ORL_EXPECT_GPUS, else SLURM's $SLURM_GPUS_ON_NODE, else None."""
    for name in (EXPECT_GPUS_ENV, "SLURM_GPUS_ON_NODE"):
        value = os.environ.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"${name}={value!r} is not a whole number of GPUs") from None
    return None


def job_nodes() -> int:
    """Nodes of this process's SLURM job ($SLURM_JOB_NUM_NODES, else $SLURM_NNODES); 1 outside SLURM."""
    return max(_env_int("SLURM_JOB_NUM_NODES", 0), _env_int("SLURM_NNODES", 0), 1)


def check_gpus(expected: int | None = None, device: str = "auto", multi_node: bool = False) -> int:
    """Fail with a clear error unless this process sees the GPUs its job asked for; returns how many it sees.

    `expected` defaults to expected_gpus(); nothing is checked when it is unknown or 0, or when device is cpu.
    Under torchrun, the processes per node must also equal the GPUs asked for. Only stages launched across
    nodes (pretrain: srun + torchrun, rules with `nodes` > 1) pass multi_node=True; any other stage refuses a
    multi-node job rather than run on its first node while the others idle.
    """
    nodes = job_nodes()
    if nodes > 1 and not multi_node:
        raise RuntimeError(
            f"this stage runs on one node but SLURM job {os.environ.get('SLURM_JOB_ID', '?')} has {nodes} nodes; "
            "only pretraining is launched across nodes (pretrain.nodes): request one node for this rule"
        )
    expected = expected_gpus() if expected is None else expected
    if not expected or str(device).startswith("cpu"):
        return 0
    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    host = os.uname().nodename
    if seen < expected:
        built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "without CUDA (a CPU-only torch wheel)"
        raise RuntimeError(
            f"this job asked for {expected} GPU(s) per node but the process on {host} sees {seen} "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}, "
            f"SLURM job {os.environ.get('SLURM_JOB_ID', 'none')}, torch {torch.__version__} built {built}). "
            "Check the GPU request SLURM received (--gpus / --gres in the job's log under .snakemake/slurm_logs), "
            f"the node's GPUs and driver (nvidia-smi), and ${EXPECT_GPUS_ENV} if set by hand"
        )
    local_world = _env_int("LOCAL_WORLD_SIZE", 0)
    if local_world and local_world != expected:
        raise RuntimeError(
            f"torchrun started {local_world} process(es) on {host} but the job asked for {expected} GPU(s) per node; "
            "--nproc_per_node must equal the GPUs per node"
        )
    if seen > expected and _env_int("LOCAL_RANK", 0) == 0:
        print(f"note: {host} shows {seen} GPUs; this job asked for {expected} and uses the first {expected}",
              file=sys.stderr)
    return seen
