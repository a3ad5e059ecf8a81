"""The index follows directory symlinks (cutting loops) and leaves out, with a warning, what it cannot index."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image

from orl.data.image_index import build_index, load_index, write_index
from orl.data.images import listing_digest


def _image(path: Path, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 12), color).save(path)


def test_symlinked_folders_are_followed_once_and_odd_names_are_left_out_with_a_warning(tmp_path: Path) -> None:
    coco = tmp_path / "coco" / "train2017"
    for i in range(3):
        _image(coco / f"{i:06d}.jpg", (40 * i, 0, 0))
    data = tmp_path / "data"
    _image(data / "own" / "a.png", (0, 200, 0))
    (data / "coco").symlink_to(coco, target_is_directory=True)  # the common way to reuse COCO
    (data / "own" / "loop").symlink_to(data, target_is_directory=True)  # a loop back to the top
    (data / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    odd = os.path.join(os.fsencode(data / "own"), b"caf\xe9.jpg")  # Latin-1 bytes: not UTF-8
    Image.new("RGB", (16, 12), (0, 0, 200)).save(odd.decode("utf-8", "surrogateescape"), format="JPEG")

    assert listing_digest(data)  # the Snakemake DAG digests the listing: no UnicodeEncodeError
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = build_index(data)
    text = "\n".join(str(w.message) for w in caught)
    assert index.file_names == ["coco/000000.jpg", "coco/000001.jpg", "coco/000002.jpg", "own/a.png"]
    assert "whose names are not valid UTF-8" in text and r"own/caf\xe9.jpg" in text, text
    assert "did not follow 1 directory symlink" in text and "own/loop" in text, text
    assert "point to nothing: gone.jpg" in text, text
    assert load_index(write_index(index, tmp_path / "index.h5")).file_names == index.file_names
