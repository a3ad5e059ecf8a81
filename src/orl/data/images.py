"""Reading images: whatever the file's mode (grayscale, CMYK, palette, RGBA, 16-bit), callers get 8-bit RGB."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")  # GIF: 1st frame


@dataclass
class FolderScan:
    """What a walk of an image folder found: image files, and everything it leaves out (relative paths, sorted)."""

    images: list[str] = field(default_factory=list)
    other_files: list[str] = field(default_factory=list)  # no image suffix
    unencodable: list[str] = field(default_factory=list)  # names that are not valid UTF-8, shown escaped
    loops: list[str] = field(default_factory=list)  # directory symlinks back to a folder already walked
    broken_links: list[str] = field(default_factory=list)  # symlinks to nothing


def scan_folder(root: str | os.PathLike) -> FolderScan:
    """Walk `root` at any depth, following directory symlinks once each (loops are cut); hidden files are ignored."""
    root = Path(root)
    scan = FolderScan()
    seen: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:  # a symlink back up the tree, or a second link to the same folder
            scan.loops.append(Path(folder).relative_to(root).as_posix())
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        rel_folder = Path(folder).relative_to(root)
        for name in files:
            rel = (rel_folder / name).as_posix()
            if name.startswith("."):
                continue
            if not os.path.isfile(os.path.join(folder, name)):
                if not os.path.exists(os.path.join(folder, name)):
                    scan.broken_links.append(ascii(os.fsencode(rel))[2:-1])
                continue
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:  # undecodable bytes arrive as surrogates; HDF5 and digests need UTF-8
                scan.unencodable.append(ascii(os.fsencode(rel))[2:-1])
                continue
            (scan.images if Path(name).suffix.lower() in IMAGE_SUFFIXES else scan.other_files).append(rel)
    for names in (scan.images, scan.other_files, scan.unencodable, scan.loops, scan.broken_links):
        names.sort()
    return scan


def image_files(root: str | os.PathLike) -> list[str]:
    """Sorted relative paths of the image files under `root`, at any depth (hidden files are ignored)."""
    return scan_folder(root).images


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
