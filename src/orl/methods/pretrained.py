"""Rebuild a trained Method from model.pt or a training checkpoint (the file format is orl.checkpoint's)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from orl.checkpoint import CorruptWeightsError, check_finite, read_state
from orl.methods import build_method


def _not_a_model(path: Path, error: Exception) -> str:
    """Why `path` is not a readable model file, in one line (torch's own advice, weights_only=False, would be unsafe)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(8)
    except OSError as e:
        return f"cannot read pretrained model ({e.strerror})"
    if magic == b"\x89HDF\r\n\x1a\n":
        return "is an HDF5 artifact, not a model; pass a training output such as results/pretrain/<method>/model.pt"
    return f"not an orl model file (model.pt or a training checkpoint): {str(error).splitlines()[0][:200]}"


def load_pretrained(path: str | os.PathLike, map_location: Any = "cpu") -> nn.Module:
    """Rebuild a trained Method from model.pt (or a training checkpoint) and load its weights; in eval mode.

    Use `.online_backbone()` / `.embed()` on the result: they are the online network, never the EMA target.
    """
    path = Path(path)
    try:
        state = read_state(path, map_location=map_location)
    except CorruptWeightsError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise RuntimeError(f"{path}: {_not_a_model(path, e)}") from e
    if not isinstance(state, dict) or "method" not in state or "hparams" not in state:
        raise RuntimeError(f"{path}: not an orl model file (no 'method'/'hparams' entries)")
    weights = state.get("state_dict", state.get("model"))
    if weights is None:
        raise RuntimeError(f"{path}: holds no weights ('state_dict' or 'model')")
    check_finite(path, weights)  # NaN weights would otherwise become all-NaN features or exported backbones
    method = build_method(state["method"], **state["hparams"])
    method.load_state_dict(weights, strict=True)
    return method.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu").eval()
