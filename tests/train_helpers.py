"""Shared helpers of the training tests: a handful of tiny images, their index, and a tiny BYOL config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from orl.data.image_index import ImageIndex, build_index, write_index

# resnet18 with small heads: a training step takes well under a second on one CPU thread at 32 px.
TINY_BYOL_ARGS: dict[str, Any] = {"arch": "resnet18", "proj_hidden": 64, "proj_dim": 32, "pred_hidden": 64}
TINY_CLI_ARGS = ["--arch", "resnet18", "--image-size", "32", "--threads", "1",
                 "--method-args", "proj_hidden=64", "proj_dim=32", "pred_hidden=64"]


def make_images(folder: Path, n: int = 8, seed: int = 0) -> Path:
    """n small random-content JPEGs of varying size (smooth blobs, so crops and blur change something)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = 40 + 4 * i, 56 + 2 * i
        small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        img.save(folder / f"img_{i:03d}.jpg", quality=90)
    return folder


def make_index(tmp: Path, n: int = 8) -> tuple[ImageIndex, Path]:
    """Images in tmp/images and their index artifact tmp/index.h5."""
    index = build_index(make_images(tmp / "images", n))
    path = write_index(index, tmp / "index.h5")
    return index, path
