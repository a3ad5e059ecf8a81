"""Damaged HDF5 artifacts are refused naming the file; readers check the ranges they rely on."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from orl_helpers import make_correspondence
from train_helpers import make_index

from orl.artifacts import ArtifactError, open_artifact, write_artifact
from orl.data.image_index import load_index
from orl.data.orl_dataset import check_correspondence
from orl.stages.mine_pairs import read_neighbors


def _flip_byte_of(path: Path, name: str) -> None:
    """Flip one byte inside the stored bytes of dataset `name` (contiguous or first chunk)."""
    with h5py.File(path, "r") as f:
        ds = f[name]
        offset = ds.id.get_chunk_info(0).byte_offset if ds.chunks else ds.id.get_offset()
    raw = bytearray(path.read_bytes())
    raw[offset + 3] ^= 0x5A
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("size", [100, 50_000], ids=["small", "large-gzip"])
def test_a_damaged_dataset_is_refused_naming_file_and_dataset(tmp_path: Path, size: int) -> None:
    path = tmp_path / "features.h5"
    values = np.linspace(0, 1, size, dtype=np.float32)
    write_artifact(path, stage="features", image_list_digest="d", params={}, arrays={"features": values})
    _flip_byte_of(path, "features")
    with open_artifact(path) as art, pytest.raises(ArtifactError, match=r"features\.h5: dataset features cannot be read"):
        art.array("features")
    with open_artifact(path) as art, pytest.raises(ArtifactError, match=r"features\.h5: dataset features"):
        art.dataset("features")[:10]


@pytest.fixture()
def tiny(tmp_path: Path):
    _, index_path = make_index(tmp_path)
    index = load_index(index_path)
    return index, index_path, make_correspondence(index, tmp_path / "correspondence.h5", k=2)


def test_a_box_outside_its_image_is_refused(tiny) -> None:
    index, _, corr = tiny
    assert check_correspondence(corr, index) == 2
    with h5py.File(corr, "r+") as f:
        f["boxes/values"][0] = [-500, -500, 90000, 90000]
    with pytest.raises(ArtifactError, match=r"correspondence\.h5: 1 box\(es\) are empty or outside their image"):
        check_correspondence(corr, index)


def test_a_self_neighbour_is_refused_in_correspondence_and_knn(tiny, tmp_path: Path) -> None:
    index, index_path, corr = tiny
    with h5py.File(corr, "r+") as f:
        f["neighbors"][3, 1] = 3
    with pytest.raises(ArtifactError, match=r"correspondence\.h5: 1 image\(s\) list themselves .*image 3"):
        check_correspondence(corr, index)
    n = len(index)
    indices = np.array([[(i + 1) % n, i if i == 5 else (i + 2) % n] for i in range(n)], dtype=np.int64)
    knn = write_artifact(tmp_path / "knn.h5", stage="knn", image_list_digest=index.digest, params={},
                         arrays={"indices": indices})
    with pytest.raises(ArtifactError, match=r"knn\.h5: 1 image\(s\) list themselves .*image 5"):
        read_neighbors(knn, index_path, n)
