"""Keep concurrent local jobs on distinct GPUs: `python -m orl.gpu_lease N command...` runs the command with
CUDA_VISIBLE_DEVICES set to N GPUs no other leased job holds.

Outside SLURM nothing else sets CUDA_VISIBLE_DEVICES, so every stage that picks "the first GPU" would land on GPU 0.
A lease is an flock on one file per GPU (in $ORL_GPU_LOCK_DIR, default /tmp/orl-gpu-locks-<uid>); the lock files
stay open across exec, so the command (and torchrun's workers' parent) holds them until it exits, kill -9 included.
Snakemake's `--resources gpu=<GPUs on the machine>` keeps it from starting more GPU jobs than there are GPUs; a
lease that finds too few free GPUs waits. Inside a SLURM job (SLURM binds the GPUs), on a machine without GPUs,
and for N = 0 the command runs unchanged.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

LOCK_DIR_ENV = "ORL_GPU_LOCK_DIR"


def visible_gpus() -> list[str]:
    """GPU ids this process may use: $CUDA_VISIBLE_DEVICES when set, else the indices nvidia-smi lists."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is not None:
        return [g.strip() for g in value.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
    return [str(i) for i, line in enumerate(listed.splitlines()) if line.startswith("GPU ")]


def lock_dir() -> Path:
    """The folder of the per-GPU lock files."""
    return Path(os.environ.get(LOCK_DIR_ENV) or f"/tmp/orl-gpu-locks-{os.getuid()}")


def try_lease(count: int, gpus: list[str], folder: Path) -> tuple[list[str], list[int]] | None:
    """Lock `count` free GPUs of `gpus`: (their ids, the open lock fds), or None (holding nothing) if too few free."""
    folder.mkdir(parents=True, exist_ok=True)
    ids: list[str] = []
    fds: list[int] = []
    for gpu in gpus:
        fd = os.open(folder / f"gpu-{gpu}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        ids.append(gpu)
        fds.append(fd)
        if len(ids) == count:
            return ids, fds
    for fd in fds:
        os.close(fd)
    return None


def lease(count: int, poll_s: float = 5.0) -> list[str] | None:
    """Hold `count` GPUs for the rest of this process (and what it execs): their ids, or None when not leasing."""
    if count <= 0 or os.environ.get("SLURM_JOB_ID"):
        return None
    gpus = visible_gpus()
    if not gpus:
        return None
    if count > len(gpus):
        raise SystemExit(f"orl.gpu_lease: the job asks for {count} GPUs but this machine shows {len(gpus)} "
                         f"({', '.join(gpus)}); lower the rule's gpus setting")
    folder = lock_dir()
    waited = False
    while (held := try_lease(count, gpus, folder)) is None:
        if not waited:
            print(f"orl.gpu_lease: waiting for {count} free GPU(s) of {len(gpus)} (locks in {folder})",
                  file=sys.stderr, flush=True)
            waited = True
        time.sleep(poll_s)
    ids, fds = held
    for fd in fds:
        os.set_inheritable(fd, True)  # the command keeps the locks
    return ids


def main(argv: list[str] | None = None) -> None:
    """python -m orl.gpu_lease N command [args...]"""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or not argv[0].isdigit():
        raise SystemExit("usage: python -m orl.gpu_lease N command [args...]")
    ids = lease(int(argv[0]))
    if ids is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
        print(f"orl.gpu_lease: CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}", file=sys.stderr, flush=True)
    os.execvp(argv[1], argv[1:])


if __name__ == "__main__":
    main()
