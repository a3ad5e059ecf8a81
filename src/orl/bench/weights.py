"""Loading the backbone under test: an exported torchvision ResNet state_dict, a torchvision checkpoint, or model.pt.

Every benchmark starts from one weights file. Accepted forms:
- `export/<method>/backbone.pth`: a torchvision ResNet state_dict without `fc.*` (the export stage's output);
- a checkpoint trained elsewhere: a torchvision state_dict (fc.* is dropped), optionally wrapped in
  {"state_dict": ...} / {"model": ...} and / or with a key prefix ("module.", "backbone.", "encoder_q." ...);
- an orl model file (results/pretrain/<method>/model.pt): its ONLINE backbone is used, never the EMA target.
The architecture is inferred from the keys (block type and block counts) unless given.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from orl.models.backbones import build_backbone

# Blocks per stage (layer1..layer4) -> arch, separately for BasicBlock and Bottleneck nets.
_BASIC_DEPTHS = {(2, 2, 2, 2): "resnet18", (3, 4, 6, 3): "resnet34"}
_BOTTLENECK_DEPTHS = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101", (3, 8, 36, 3): "resnet152"}
_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")
_MOMENTUM = re.compile(r"target|key|momentum|ema|teacher|encoder_k", re.IGNORECASE)


class WeightsError(RuntimeError):
    """The weights file cannot be read or does not hold a ResNet backbone."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _unwrap(obj: Any, path: Path) -> Mapping[str, torch.Tensor]:
    # Checkpoints from other code bases nest the weights one level down.
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "backbone"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise WeightsError(f"{path}: holds no state_dict (a mapping of parameter names to tensors)")


def strip_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the wrapper prefix before torchvision's names (found from the stem conv) and every fc.* entry."""
    stems = [k for k in state if k.endswith("conv1.weight") and "layer" not in k]
    if not stems:
        raise WeightsError("no ResNet stem ('conv1.weight') among the keys")
    # Several candidates happen with online + target (EMA / key) copies: never pick the momentum copy, then prefer
    # the shortest (outermost) prefix whose sub-tree has layer4.
    prefixes = sorted({k[: -len("conv1.weight")] for k in stems}, key=lambda p: (bool(_MOMENTUM.search(p)), len(p), p))
    for prefix in prefixes:
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if any(k.startswith("layer4.") for k in sub):
            return {k: v for k, v in sub.items() if not k.startswith("fc.")}
    raise WeightsError("found a ResNet stem but no layer4 below it")


def infer_arch(state: Mapping[str, torch.Tensor]) -> str:
    """resnet18/34/50/101/152 from the block type (conv3 = Bottleneck) and the number of blocks per stage."""
    counts = [0, 0, 0, 0]
    for key in state:
        m = _BLOCK_KEY.match(key)
        if m:
            stage, block = int(m.group(1)) - 1, int(m.group(2))
            counts[stage] = max(counts[stage], block + 1)
    bottleneck = any(k.startswith("layer1.0.conv3.") for k in state)
    table = _BOTTLENECK_DEPTHS if bottleneck else _BASIC_DEPTHS
    arch = table.get(tuple(counts))
    if arch is None:
        kind = "Bottleneck" if bottleneck else "BasicBlock"
        raise WeightsError(f"cannot infer the arch: {kind} blocks per stage {counts} match no torchvision ResNet")
    return arch


def _load_orl_model(obj: Mapping[str, Any], path: Path) -> dict[str, torch.Tensor]:
    from orl.methods.pretrained import load_pretrained  # lazy: imports the methods package

    method = load_pretrained(path, map_location="cpu")
    backbone = method.online_backbone() if hasattr(method, "online_backbone") else None
    if not isinstance(backbone, nn.Module):
        raise WeightsError(f"{path}: orl model of method {obj.get('method')!r} exposes no online_backbone()")
    return {k: v.detach().cpu() for k, v in backbone.state_dict().items()}


def read_backbone_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The torchvision-named backbone state_dict (no fc.*) held by any accepted weights file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        # weights_only: a foreign checkpoint must not be able to run code on load.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise WeightsError(f"{path}: cannot read weights ({e})") from e
    if isinstance(obj, Mapping) and "method" in obj and "hparams" in obj:
        return _load_orl_model(obj, path)
    try:
        return strip_prefix(_unwrap(obj, path))
    except WeightsError as e:
        raise WeightsError(f"{path}: {e}") from None


def load_backbone(path: str | os.PathLike, arch: str | None = None) -> tuple[nn.Module, str]:
    """Build the ResNet trunk (res5 map out) and load the weights strictly; returns (module in eval mode, arch)."""
    state = read_backbone_state(path)
    found = infer_arch(state)
    if arch is not None and arch != found:
        raise WeightsError(f"{path}: --arch {arch} given but the weights are a {found}")
    model = build_backbone(found)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(
            f"{path}: does not match torchvision {found} (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model.eval(), found
