"""Shared helpers of the classification-benchmark tests: a tiny demo dataset, random backbones, running a stage."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import ModuleType

import torch
import torchvision

from orl.data.demo_scenes import generate_demo_dataset


def tiny_demo(folder: Path, num_train: int = 24, num_val: int = 12, image_size: int = 64) -> Path:
    """A demo scene dataset small enough to benchmark in seconds; returns its root."""
    generate_demo_dataset(folder, num_train=num_train, num_val=num_val, image_size=image_size)
    return folder


def random_backbone(path: Path, arch: str = "resnet18", seed: int = 0, keep_fc: bool = False) -> Path:
    """A randomly initialised torchvision ResNet saved like export/<method>/backbone.pth (fc.* dropped by default)."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)()
    state = {k: v for k, v in net.state_dict().items() if keep_fc or not k.startswith("fc.")}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def run_stage(module: ModuleType, argv: list[str]) -> None:
    """Parse `argv` with the stage's own flags and run it, as `orl <stage>` does."""
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    module.run(parser.parse_args(argv))
