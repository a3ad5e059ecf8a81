"""Self-supervised methods (BYOL, MoCo v2, SimCLR, ORL) behind one interface, and their registry."""

from __future__ import annotations

from typing import Any

from orl.data.datasets import SeededDataset, build_dataset
from orl.data.image_index import ImageIndex
from orl.methods.base import Method, Recipe
from orl.methods.byol import BYOL
from orl.methods.moco_v2 import MoCoV2
from orl.methods.orl import ORL
from orl.methods.simclr import SimCLR

METHODS: dict[str, type[Method]] = {"byol": BYOL, "moco_v2": MoCoV2, "simclr": SimCLR, "orl": ORL}


def method_class(name: str) -> type[Method]:
    """The registered class of method `name` (its recipe and default_optim are class attributes)."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}") from None


def method_recipe(name: str) -> Recipe:
    """The training recipe (views, warmup, BatchNorm mode) of method `name`."""
    return method_class(name).recipe


def build_training_dataset(name: str, index: ImageIndex, **kwargs: Any) -> SeededDataset:
    """Method `name`'s training dataset with the method's own view recipes (kwargs: image_size, seed, ...)."""
    return build_dataset(name, index, views=method_recipe(name).views, **kwargs)


def build_method(name: str, **kwargs: Any) -> Method:
    """Instantiate the method registered as `name` with its constructor kwargs (e.g. a checkpoint's hparams())."""
    return method_class(name)(**kwargs)


__all__ = ["BYOL", "METHODS", "Method", "MoCoV2", "ORL", "Recipe", "SimCLR", "build_method", "build_training_dataset",
           "method_class", "method_recipe"]
