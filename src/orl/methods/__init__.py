"""Self-supervised methods (BYOL, MoCo v2, SimCLR, ORL) behind one interface, and their registry."""

from __future__ import annotations

from typing import Any

from orl.methods.base import Method
from orl.methods.byol import BYOL
from orl.methods.moco_v2 import MoCoV2
from orl.methods.orl import ORL
from orl.methods.simclr import SimCLR

METHODS: dict[str, type[Method]] = {"byol": BYOL, "moco_v2": MoCoV2, "simclr": SimCLR, "orl": ORL}


def build_method(name: str, **kwargs: Any) -> Method:
    """Instantiate the method registered as `name` with its constructor kwargs (e.g. a checkpoint's hparams())."""
    try:
        cls = METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}") from None
    return cls(**kwargs)


__all__ = ["BYOL", "METHODS", "Method", "MoCoV2", "ORL", "SimCLR", "build_method"]
