"""The index rule reruns when any image below the dataset folder is replaced, added or removed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from orl.data.image_index import load_index
from workflow_helpers import check, snakemake


def _image(path: Path, color: tuple[int, int, int], mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 16), color).save(path)
    os.utime(path, (mtime, mtime))  # a distinct mtime even on coarse-grained file systems


@pytest.mark.slow
def test_index_reruns_on_replacement_addition_in_subfolder_and_removal(tmp_path: Path) -> None:
    images = tmp_path / "images"
    _image(images / "sub" / "a.png", (255, 0, 0), 1_000_000)
    _image(images / "b.png", (0, 255, 0), 1_000_000)
    config = {"dataset": {"kind": "folder", "images": str(images)}}
    target = "results/index/images.h5"
    index_path = tmp_path / "results" / "index" / "images.h5"

    def index_after_rerun() -> tuple[list[str], str]:
        top = images.stat().st_mtime
        proc = check(snakemake(tmp_path, "--cores", "1", target, config=config))
        assert "index_images" in proc.stdout + proc.stderr, "the index did not rerun"
        os.utime(images, (top, top))  # only the change below the top folder may trigger the rerun
        index = load_index(index_path)
        return index.file_names, index.digest

    names, digest = index_after_rerun()
    assert names == ["b.png", "sub/a.png"]
    assert "Nothing to be done" in check(snakemake(tmp_path, "--cores", "1", target, config=config)).stderr

    _image(images / "sub" / "a.png", (0, 0, 255), 2_000_000)  # replaced in place: same name and size
    names2, digest2 = index_after_rerun()
    assert names2 == names and digest2 != digest

    _image(images / "sub" / "c.png", (9, 9, 9), 2_000_000)  # added in a subfolder
    assert index_after_rerun()[0] == ["b.png", "sub/a.png", "sub/c.png"]

    (images / "sub" / "a.png").unlink()
    assert index_after_rerun()[0] == ["b.png", "sub/c.png"]
