"""Results and dataset folders whose paths hold spaces and non-ASCII characters run through the rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from demo_run import TINY_RUN
from workflow_helpers import check, deep_merge, snakemake


def _write_images(folder: Path, count: int) -> None:
    """Small images of random coloured rectangles (selective search finds boxes in them)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for k in range(count):
        img = np.full((64, 80, 3), rng.integers(0, 255, 3), dtype=np.uint8)
        for _ in range(3):
            y, x = rng.integers(0, 40, 2)
            img[y : y + 24, x : x + 30] = rng.integers(0, 255, 3)
        Image.fromarray(img).save(folder / f"bild {k} é.png")


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_index_proposals_training_and_mining_in_folders_with_spaces(tmp_path: Path) -> None:
    images = tmp_path / "data set ü" / "bilder mit leerzeichen"
    _write_images(images, 8)
    results = tmp_path / "r ésultats" / "run 1"
    config = deep_merge(TINY_RUN, {
        "results": str(results),
        "dataset": {"kind": "folder", "images": str(images)},
        "pretrain": {"batch_size": 8},  # one optimiser step
    })
    workdir = tmp_path / "work dir"
    before = _files(tmp_path)
    targets = [f"{results}/mining/roi_embeddings/part-0.h5", f"{results}/mining/knn.h5"]
    check(snakemake(workdir, "--cores", "2", *targets, config=config, timeout=900))
    for target in targets:
        assert Path(target).is_file()
    assert (results / "pretrain" / "byol" / "model.pt").is_file()
    assert (results / "logs" / "index_images.log").read_text().startswith("indexed 8 images")
    # Nothing outside the results folder (a redirect to the path before a space would create e.g. '.../r').
    new = {p for p in _files(tmp_path) - before if results not in p.parents and (workdir / ".snakemake") not in p.parents}
    assert new == {workdir / "test-config.yaml"}
