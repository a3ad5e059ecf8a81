"""ResNet backbones that return the res5 feature map, with torchvision parameter names."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

# Output channels of res5 per architecture (BasicBlock nets end at 512, Bottleneck nets at 2048).
_FEATURE_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048}


def feature_dim(arch: str) -> int:
    """Number of channels of the res5 map of `arch`."""
    try:
        return _FEATURE_DIMS[arch]
    except KeyError:
        raise ValueError(f"unknown backbone arch {arch!r}; known: {sorted(_FEATURE_DIMS)}") from None


class ResNetBackbone(nn.Module):
    """torchvision ResNet without avgpool/fc: image (N, 3, H, W) -> res5 map (N, C, H/32, W/32)."""

    def __init__(self, arch: str = "resnet50") -> None:
        super().__init__()
        self.arch = arch
        self.out_dim = feature_dim(arch)
        # Random init with torchvision's defaults (kaiming convs, BN gamma 1, no zero-init residual), as BYOL/ORL.
        net = getattr(torchvision.models, arch)(weights=None)
        # torchvision's attribute names: the state_dict loads into torchvision.models.<arch>() with only fc.* missing.
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the res5 feature map."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def build_backbone(arch: str) -> nn.Module:
    """Randomly initialised ResNet trunk returning the res5 map; arch in resnet18/34/50/101/152."""
    feature_dim(arch)  # validates the name with a clear error before touching torchvision
    return ResNetBackbone(arch)


def global_pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pool of a (N, C, H, W) map to (N, C)."""
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
