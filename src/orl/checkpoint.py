"""Checkpoints for resume, and the final model file the later stages load.

Training checkpoints (`ckpt-<step>.pt` in a folder beside the declared output) hold everything needed to continue
bit-for-bit: model, optimiser, grad scaler, position, RNG states, config. The final file (`model.pt`, written once)
holds only {"method", "hparams", "state_dict", "meta"}. Both are written atomically: a temporary file in the same
folder, fsync, os.replace; a crash leaves either the old file or the new one, never half of one. Every read checks
the CRC-32 that torch.save's zip container stores for each tensor, so a flipped bit is refused with the file's name
(on resume a corrupt checkpoint is skipped, like a truncated one), and model weights must be finite.
"""

from __future__ import annotations

import os
import random
import re
import warnings
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from orl import fileio

CKPT_PATTERN = re.compile(r"^ckpt-(\d+)\.pt$")
CHECKPOINT_KEYS = ("method", "hparams", "model", "optimizer", "scaler", "epoch", "step", "rng", "config")
FINAL_KEYS = ("method", "hparams", "state_dict", "meta")


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call `write(f)` on a temp file in the target folder, fsync, then rename over `path`; the temp goes on error."""
    return fileio.atomic_write(path, write)


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to a temp file in the target folder, fsync, then rename over `path`."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def checkpoint_path(folder: str | os.PathLike, step: int) -> Path:
    """Name of the checkpoint taken after `step` optimiser steps (zero-padded so names sort by step)."""
    return Path(folder) / f"ckpt-{step:09d}.pt"


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Checkpoint files in `folder`, newest (highest step) first; temp files are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CKPT_PATTERN.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found, reverse=True)]


class CorruptWeightsError(RuntimeError):
    """A model or checkpoint file fails its CRC-32 check or holds non-finite weights; the message names it."""


def verify_crc(path: str | os.PathLike) -> None:
    """Raise CorruptWeightsError naming `path` when a member of its zip container fails its stored CRC-32."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return  # not torch's zip format (truncated, HDF5, legacy pickle): torch.load names the problem
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise CorruptWeightsError(f"{path}: unreadable zip container ({e})") from e
    if bad is not None:
        raise CorruptWeightsError(
            f"{path}: corrupt file: {bad.split('/', 1)[-1]} fails its CRC-32 check (disk or copy error); "
            "delete it and rerun the stage that wrote it"
        )


def nonfinite_tensors(weights: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors in `weights` that hold NaN or inf."""
    return [k for k, v in weights.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def check_finite(path: Path, weights: Mapping[str, Any]) -> None:
    """Raise CorruptWeightsError naming `path` when a weight tensor holds NaN or inf."""
    bad = nonfinite_tensors(weights)
    if bad:
        raise CorruptWeightsError(
            f"{path}: {len(bad)} weight tensor(s) hold NaN or inf (e.g. {', '.join(bad[:3])}); the training diverged "
            "or the file is damaged: rerun the training that wrote it"
        )


def read_state(path: Path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """torch.load of an orl weights file (safe loader), after its CRC-32 check."""
    verify_crc(path)
    # weights_only: our checkpoints hold only tensors and plain Python containers, so the safe loader suffices.
    return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why `path` is not a usable training checkpoint (unreadable, CRC mismatch, keys, non-finite weights), or None."""
    path = Path(path)
    try:
        state = read_state(path, mmap=True)
        if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
            return "not a complete training checkpoint"
        if isinstance(state["model"], Mapping):
            check_finite(path, state["model"])
    except CorruptWeightsError as e:
        return str(e).removeprefix(f"{path}: ")
    except Exception as e:  # noqa: BLE001 - any failure to read means "not usable"
        return f"unreadable ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})"
    return None


def is_valid_checkpoint(path: str | os.PathLike) -> bool:
    """True when `path` loads (memory-mapped), passes its CRC check, has every key and finite weights."""
    return checkpoint_problem(path) is None


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The newest usable checkpoint in `folder`, skipping corrupt or partial files (with a warning); None if none."""
    for path in list_checkpoints(folder):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        warnings.warn(f"skipping unreadable checkpoint {path} ({problem}); falling back to an older one", stacklevel=2)
    return None


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files of checkpoint writes that a killed run left (each can be a whole checkpoint)."""
    return fileio.remove_stale_temps(folder, "ckpt-")


def prune_checkpoints(folder: str | os.PathLike, keep: int) -> None:
    """Delete all but the `keep` newest checkpoints (keep <= 0 keeps everything)."""
    if keep > 0:
        for path in list_checkpoints(folder)[keep:]:
            path.unlink(missing_ok=True)


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA RNG states, as plain containers and tensors (weights_only-loadable)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what rng_state() returned."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write a training checkpoint atomically; `state` must have every key of CHECKPOINT_KEYS."""
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    return atomic_save(dict(state), path)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a training checkpoint written by save_checkpoint."""
    return read_state(Path(path), map_location=map_location)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_final(path: str | os.PathLike, method: nn.Module, meta: Mapping[str, Any] | None = None) -> Path:
    """Write the declared training output: {"method", "hparams", "state_dict", "meta"}, atomically."""
    method = unwrap(method)
    state_dict = {k: v.detach().cpu() for k, v in method.state_dict().items()}
    return atomic_save(
        {"method": method.name, "hparams": method.hparams(), "state_dict": state_dict, "meta": dict(meta or {})},
        path,
    )
