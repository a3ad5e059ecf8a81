"""Inputs shared by benchmarks/speed/proposals_speed.py and benchmarks/speed/mining_speed.py: the images and the machine line.

Imported by those scripts as a sibling module (they run as `python benchmarks/<script>.py`).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
from PIL import Image

from orl.data.images import load_rgb
from orl.mining.proposals import ImageTask

COCO128 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "coco128" / "images"


def cpu_summary() -> str:
    """'<CPU model>, <n> logical CPUs (load <1-min load> at start)' for the table's machine line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} logical CPUs (load {load:.1f} at start)"


def synthetic_scenes(folder: Path, n: int) -> list[Path]:
    """`n` seeded 640x480 PNG scenes (noise plus 12 flat rectangles each) written into `folder`."""
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        img = rng.normal(110, 25, (480, 640, 3))
        for _ in range(12):
            x, y = rng.integers(0, 600), rng.integers(0, 440)
            img[y : y + rng.integers(20, 240), x : x + rng.integers(20, 320)] = rng.integers(0, 255, 3)
        path = folder / f"synthetic{k}.png"
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def benchmark_images(tmp: Path, n: int) -> tuple[list[Path], str]:
    """The first `n` coco128 photos when present, else `n` synthetic scenes in `tmp`; with a description."""
    if COCO128.is_dir():
        paths = sorted(COCO128.glob("*.jpg"))[:n]
        return paths, f"first {len(paths)} coco128 photos"
    paths = synthetic_scenes(tmp, n)
    return paths, f"{len(paths)} synthetic 640x480 scenes"


def image_tasks(paths: list[Path]) -> list[ImageTask]:
    """One proposal task per image, positions in list order."""
    tasks = []
    for k, p in enumerate(paths):
        h, w = load_rgb(p).shape[:2]
        tasks.append(ImageTask(k, str(p), w, h))
    return tasks
