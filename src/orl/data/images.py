"""Reading images: whatever the file's mode (grayscale, CMYK, palette, RGBA, 16-bit), callers get 8-bit RGB."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")  # GIF: 1st frame


def image_files(root: str | os.PathLike) -> list[str]:
    """Sorted relative paths of the image files under `root`, at any depth (hidden files are ignored)."""
    root = Path(root)
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def listing_digest(root: str | os.PathLike) -> str:
    """Digest of the name, size and mtime of every image file under `root` (stat only, no reading); '' if absent.

    The index rule takes it as a parameter, so Snakemake reruns the index when an image is replaced, added or removed
    anywhere below the folder (the folder's own mtime changes only for its direct entries).
    """
    root = Path(root)
    if not root.is_dir():
        return ""
    h = hashlib.sha256()
    for name in image_files(root):
        st = (root / name).stat()
        h.update(f"{name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


class ImageReadError(RuntimeError):
    """An image file could not be decoded."""


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (or 32-bit integer) grayscale: scale to 8 bits instead of letting PIL clip at 255.
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on black, as PIL's convert("RGB") does for RGBA, but also for palette transparency.
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")


def open_rgb(path: str | os.PathLike, data: bytes | None = None) -> Image.Image:
    """Decode an image fully and return it as an 8-bit RGB PIL image; ImageReadError names the file.

    `data`: the file's bytes when the caller has read them already (decoded from memory, not read again).
    """
    path = Path(path)
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as img:
            img.load()  # force a full decode so truncated files fail here, not later in a worker
            return _to_rgb(img)
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise ImageReadError(f"{path}: cannot decode image ({e})") from e


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image into an (H, W, 3) uint8 RGB array."""
    return np.asarray(open_rgb(path))
