"""roi_align mode on extreme images: the long side is capped, and an allocation failure names the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from orl.mining.roi_embed import RoiSettings, embed_kept, resize_short_side


def test_long_side_is_capped() -> None:
    rgb, sx, sy = resize_short_side(Image.new("RGB", (20000, 20)), 640, 4000)
    assert rgb.shape == (4, 4000, 3) and sx == pytest.approx(0.2) and sy == pytest.approx(0.2)
    rgb, _, _ = resize_short_side(Image.new("RGB", (640, 480)), 240, 4000)
    assert rgb.shape == (240, 320, 3)  # ordinary images keep the short-side rule


class _AllocFails:
    device = torch.device("cpu")
    batch_size = 8

    def embed_rois(self, image: torch.Tensor, boxes: torch.Tensor, output_size: int) -> np.ndarray:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory")


def test_allocation_failure_names_the_image(tmp_path: Path) -> None:
    path = tmp_path / "long image.png"
    Image.new("RGB", (400, 20), (90, 20, 20)).save(path)
    settings = RoiSettings(mode="roi_align", image_size=64)
    out = np.zeros((1, 8), dtype=np.float32)
    with pytest.raises(MemoryError, match=r"long image.png \(400x20, resized to 1280x64\): out of memory"):
        embed_kept(_AllocFails(), [(str(path), 400, 20)], [np.array([[0, 0, 10, 10]])], settings, out)
