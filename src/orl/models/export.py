"""Stage-4 export (ORL_SPEC section 4): the ONLINE backbone as a torchvision ResNet state_dict and for Detectron2.

Two files per model:
- `backbone.pth`: torchvision ResNet names (conv1, bn1, layer1..layer4, with BN running stats and
  num_batches_tracked), no fc.*; `torchvision.models.resnet50().load_state_dict(sd, strict=False)` reports only
  fc.weight / fc.bias missing.
- `backbone_d2.pkl`: a Detectron2 checkpoint {"model": {name: numpy array}, "__author__": "orl",
  "matching_heuristics": True} with Detectron2's ResNet names: conv1 -> stem.conv1, bn1 -> stem.conv1.norm,
  layerL.B.convC / bnC -> res{L+1}.B.convC / convC.norm, downsample.0 / downsample.1 -> shortcut / shortcut.norm
  (BasicBlock nets have conv1-2, Bottleneck nets conv1-3); num_batches_tracked is dropped (Detectron2's
  FrozenBatchNorm2d has none). Use it with the settings of `detectron2_config(arch)`: the weights expect RGB input
  normalised with torchvision's mean / std in 0-255 units (MODEL.PIXEL_MEAN [123.675, 116.280, 103.530],
  MODEL.PIXEL_STD [58.395, 57.120, 57.375], INPUT.FORMAT RGB), and MODEL.RESNETS.STRIDE_IN_1X1 False because
  torchvision puts a Bottleneck's stride in the 3x3 conv (Detectron2's default, True, is the MSRA layout);
  MODEL.RESNETS.DEPTH = 18/34/50/101/152, and RES2_OUT_CHANNELS 64 for resnet18/34.

The weights always come from `Method.online_backbone()`: exporting the EMA target by mistake is a known bug elsewhere.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from orl.fileio import atomic_write
from orl.models.backbones import build_backbone, feature_dim

D2_AUTHOR = "orl"
PIXEL_MEAN = [123.675, 116.280, 103.530]  # torchvision's ImageNet mean x 255, RGB order
PIXEL_STD = [58.395, 57.120, 57.375]
_DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101, "resnet152": 152}
_BN = r"(?P<p>weight|bias|running_mean|running_var)"
# torchvision name -> Detectron2 name; the first matching rule wins; None: not exported to Detectron2.
# Groups: l = torchvision layer (stage s = l + 1 in Detectron2), b = block, c = conv, p = BN tensor.
_RULES: list[tuple[re.Pattern[str], str | None]] = [
    (re.compile(r"^(?:.*\.)?num_batches_tracked$"), None),
    (re.compile(r"^conv1\.weight$"), "stem.conv1.weight"),
    (re.compile(rf"^bn1\.{_BN}$"), "stem.conv1.norm.{p}"),
    (re.compile(r"^layer(?P<l>[1-4])\.(?P<b>\d+)\.conv(?P<c>[1-3])\.weight$"), "res{s}.{b}.conv{c}.weight"),
    (re.compile(rf"^layer(?P<l>[1-4])\.(?P<b>\d+)\.bn(?P<c>[1-3])\.{_BN}$"), "res{s}.{b}.conv{c}.norm.{p}"),
    (re.compile(r"^layer(?P<l>[1-4])\.(?P<b>\d+)\.downsample\.0\.weight$"), "res{s}.{b}.shortcut.weight"),
    (re.compile(rf"^layer(?P<l>[1-4])\.(?P<b>\d+)\.downsample\.1\.{_BN}$"), "res{s}.{b}.shortcut.norm.{p}"),
]


class ExportError(RuntimeError):
    """The weights cannot be exported (not a torchvision ResNet backbone, or a name that cannot be mapped)."""


def backbone_state(method: nn.Module) -> dict[str, torch.Tensor]:
    """The ONLINE backbone's state_dict of a trained Method, as contiguous CPU tensors (torchvision names)."""
    backbone = method.online_backbone() if hasattr(method, "online_backbone") else None
    if not isinstance(backbone, nn.Module):
        raise ExportError(f"{type(method).__name__} exposes no online_backbone()")
    # contiguous: a GPU run trained channels_last, and numpy / other tools expect plain NCHW layouts.
    return {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}


def random_backbone_state(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A randomly initialised backbone (torchvision's init, as ORL's stage 3 starts from) for reference benchmarks."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = build_backbone(arch)
    return {k: v.detach().contiguous() for k, v in backbone.state_dict().items()}


def arch_of(state: Mapping[str, torch.Tensor]) -> str:
    """resnet18/34/50/101/152 from the block type and the number of blocks per stage."""
    blocks = [1 + max((int(m.group(1)) for k in state if (m := re.match(rf"^layer{s}\.(\d+)\.", k))), default=-1)
              for s in range(1, 5)]
    bottleneck = "layer1.0.conv3.weight" in state
    for arch in _DEPTHS:
        net = _meta_resnet(arch)
        if [len(getattr(net, f"layer{s}")) for s in range(1, 5)] == blocks and (
            isinstance(net.layer1[0], torchvision.models.resnet.Bottleneck) == bottleneck
        ):
            return arch
    raise ExportError(f"not a torchvision ResNet: blocks per stage {blocks}, bottleneck {bottleneck}")


def _meta_resnet(arch: str) -> nn.Module:
    # Shapes only: on the meta device nothing is allocated or initialised, so even resnet152 is instant.
    with torch.device("meta"):
        return getattr(torchvision.models, arch)(weights=None)


def check_torchvision(state: Mapping[str, torch.Tensor], arch: str) -> None:
    """Raise ExportError unless `state` loads into torchvision.models.<arch>() strictly apart from fc.*."""
    expected = {k: v.shape for k, v in _meta_resnet(arch).state_dict().items() if not k.startswith("fc.")}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if tuple(expected[k]) != got[k])
    if missing or unexpected or wrong:
        raise ExportError(
            f"weights do not match torchvision {arch}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shapes {wrong[:5]}"
        )


def detectron2_name(key: str) -> str | None:
    """Detectron2 ResNet name of a torchvision backbone key; None for num_batches_tracked (not exported)."""
    for pattern, template in _RULES:
        m = pattern.match(key)
        if m:
            if template is None:
                return None
            groups = m.groupdict()
            if "l" in groups:
                groups["s"] = int(groups["l"]) + 1
            return template.format(**groups)
    raise ExportError(f"no Detectron2 name for backbone key {key!r}")


def detectron2_names(keys: Iterable[str]) -> dict[str, str]:
    """torchvision key -> Detectron2 key for every exported tensor; refuses collisions."""
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for key in keys:
        name = detectron2_name(key)
        if name is None:
            continue
        if name in seen:
            raise ExportError(f"{key!r} and {seen[name]!r} both map to Detectron2 key {name!r}")
        seen[name], out[key] = key, name
    return out


def to_detectron2(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The Detectron2 checkpoint dict {"model": {d2 name: float32 numpy}, "__author__", "matching_heuristics"}."""
    names = detectron2_names(state)
    model = {d2: state[tv].detach().cpu().float().contiguous().numpy() for tv, d2 in names.items()}
    return {"model": model, "__author__": D2_AUTHOR, "matching_heuristics": True}


def detectron2_config(arch: str) -> dict[str, Any]:
    """The Detectron2 config entries the exported weights need (flattened keys)."""
    if arch not in _DEPTHS:
        raise ExportError(f"unknown arch {arch!r}; known: {sorted(_DEPTHS)}")
    cfg: dict[str, Any] = {
        "MODEL.PIXEL_MEAN": PIXEL_MEAN,
        "MODEL.PIXEL_STD": PIXEL_STD,
        "INPUT.FORMAT": "RGB",
        "MODEL.RESNETS.DEPTH": _DEPTHS[arch],
        "MODEL.RESNETS.STRIDE_IN_1X1": False,
    }
    if feature_dim(arch) == 512:  # BasicBlock nets: Detectron2 requires RES2_OUT_CHANNELS 64 for them
        cfg["MODEL.RESNETS.RES2_OUT_CHANNELS"] = 64
    return cfg


def write_torchvision(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write backbone.pth (torch.save of the plain state_dict), atomically."""
    return atomic_write(path, lambda f: torch.save(dict(state), f))


def write_detectron2(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write backbone_d2.pkl (the Detectron2 checkpoint dict, pickled), atomically."""
    ckpt = to_detectron2(state)
    return atomic_write(path, lambda f: pickle.dump(ckpt, f, protocol=pickle.HIGHEST_PROTOCOL))


def read_detectron2(path: str | os.PathLike) -> dict[str, Any]:
    """Read a Detectron2 pickle back (as Detectron2 does: latin1 for old Caffe2 files)."""
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def load_into_torchvision(path: str | os.PathLike, arch: str) -> nn.Module:
    """torchvision.models.<arch>() with backbone.pth loaded (fc keeps its random init); for checks and users."""
    net = getattr(torchvision.models, arch)(weights=None)
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if sorted(missing) != ["fc.bias", "fc.weight"] or unexpected:
        raise ExportError(f"{path}: missing {missing}, unexpected {unexpected} in torchvision {arch}")
    return net

