"""The image index: order, digest, every kind of bad input, and every image mode read as RGB."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from orl.artifacts import Artifact, ArtifactError, check_same_images, write_artifact
from orl.data.image_index import DatasetError, build_index, load_index, shard_range, write_index
from orl.data.images import ImageReadError, load_rgb


def _jpeg(path: Path, size=(40, 30), color=(200, 10, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, quality=95)
    return path


def _coco(path: Path, names: list[str], ids: list[int] | None = None) -> Path:
    ids = ids or list(range(1, len(names) + 1))
    images = [{"id": i, "file_name": n, "width": 40, "height": 30} for i, n in zip(ids, names)]
    path.write_text(json.dumps({"images": images, "annotations": [], "categories": []}))
    return path


def test_coco_order_ids_sizes_and_round_trip(tmp_path: Path) -> None:
    for name in ("b.jpg", "a.jpg", "c.jpg"):
        _jpeg(tmp_path / "img" / name)
    ann = _coco(tmp_path / "ann.json", ["c.jpg", "a.jpg", "b.jpg"], [30, 10, 20])
    index = build_index(tmp_path / "img", ann)
    assert index.file_names == ["c.jpg", "a.jpg", "b.jpg"]  # the JSON's order, not sorted
    assert index.ids.tolist() == [30, 10, 20]
    assert index.widths.tolist() == [40] * 3 and index.heights.tolist() == [30] * 3
    out = write_index(index, tmp_path / "index.h5")
    back = load_index(out)
    assert back.file_names == index.file_names and back.digest == index.digest
    assert back.annotations == ann.resolve()
    assert back.path(1) == (tmp_path / "img" / "a.jpg").resolve()


def test_folder_is_sorted_recursive_and_digest_tracks_content(tmp_path: Path) -> None:
    for name in ("z.png", "sub/a.jpg", "m.JPG", "notes.txt", ".hidden.jpg"):
        p = tmp_path / name
        if name.endswith(".txt"):
            p.write_text("x")
        elif name.endswith("png"):
            Image.new("RGB", (8, 8)).save(p)
        else:
            _jpeg(p)
    index = build_index(tmp_path)
    assert index.file_names == ["m.JPG", "sub/a.jpg", "z.png"]
    digest = index.digest
    _jpeg(tmp_path / "sub" / "a.jpg", size=(41, 30))
    assert build_index(tmp_path).digest != digest


def test_every_mode_is_read_as_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gray = Image.fromarray(rng.integers(0, 255, (20, 30), dtype=np.uint8))
    gray.save(tmp_path / "gray.png")
    Image.new("CMYK", (30, 20), (10, 20, 30, 40)).save(tmp_path / "cmyk.jpg")
    gray.convert("P").save(tmp_path / "palette.png")
    Image.new("RGBA", (30, 20), (255, 0, 0, 128)).save(tmp_path / "rgba.png")
    deep = Image.fromarray(np.arange(600, dtype=np.uint16).reshape(20, 30) * 100)
    assert deep.mode == "I;16"
    deep.save(tmp_path / "deep.png")
    index = build_index(tmp_path)
    assert len(index) == 5 and not index.skipped
    for i in range(len(index)):
        arr = load_rgb(index.path(i))
        assert arr.shape == (20, 30, 3) and arr.dtype == np.uint8
    deep_rgb = load_rgb(tmp_path / "deep.png")
    assert deep_rgb.max() > 200 and deep_rgb.min() == 0  # scaled from 16 bits, not clipped at 255
    np.testing.assert_array_equal(load_rgb(tmp_path / "gray.png")[..., 0], np.asarray(gray))


def test_unreadable_images_are_left_out_and_listed(tmp_path: Path) -> None:
    good = _jpeg(tmp_path / "img" / "good.jpg", size=(64, 64))
    (tmp_path / "img" / "empty.jpg").write_bytes(b"")
    (tmp_path / "img" / "text.jpg").write_text("this is not an image")
    data = good.read_bytes()
    _jpeg(tmp_path / "img" / "big.jpg", size=(256, 256))
    big = (tmp_path / "img" / "big.jpg").read_bytes()
    (tmp_path / "img" / "truncated.jpg").write_bytes(big[: len(big) // 2])
    assert data
    with pytest.warns(UserWarning, match="left out 3 unreadable"):
        index = build_index(tmp_path / "img")
    assert index.file_names == ["big.jpg", "good.jpg"]
    reasons = dict(index.skipped)
    assert set(reasons) == {"empty.jpg", "text.jpg", "truncated.jpg"}
    assert reasons["empty.jpg"] == "empty file"
    out = write_index(index, tmp_path / "index.h5")
    assert {n for n, _ in load_index(out).skipped} == set(reasons)
    with pytest.raises(ImageReadError, match="truncated.jpg"):
        load_rgb(tmp_path / "img" / "truncated.jpg")


def test_bad_datasets_raise_errors_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=str(tmp_path / "missing")):
        build_index(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        build_index(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_text("nope")
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match="none of the 1 images"):
        build_index(tmp_path / "bad")

    _jpeg(tmp_path / "img" / "a.jpg")
    ann = _coco(tmp_path / "ann.json", ["a.jpg", "gone.jpg"])
    with pytest.raises(DatasetError) as e:
        build_index(tmp_path / "img", ann)
    assert "gone.jpg" in str(e.value) and str(ann) in str(e.value)
    with pytest.raises(DatasetError, match="does not exist"):
        build_index(tmp_path / "img", tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DatasetError, match="broken.json: not valid JSON"):
        build_index(tmp_path / "img", tmp_path / "broken.json")
    (tmp_path / "other.json").write_text(json.dumps({"something": []}))
    with pytest.raises(DatasetError, match="no 'images' list"):
        build_index(tmp_path / "img", tmp_path / "other.json")
    with pytest.raises(DatasetError, match="more than once"):
        build_index(tmp_path / "img", _coco(tmp_path / "dup.json", ["a.jpg", "a.jpg"]))


def test_load_index_refuses_other_artifacts_and_tampering(tmp_path: Path) -> None:
    other = write_artifact(tmp_path / "knn.h5", stage="knn", image_list_digest="x", params={}, arrays={})
    with pytest.raises(ArtifactError, match="expected 'image_index'"):
        load_index(other)
    _jpeg(tmp_path / "img" / "a.jpg")
    out = write_index(build_index(tmp_path / "img"), tmp_path / "index.h5")
    import h5py

    with h5py.File(out, "r+") as f:
        f["widths"][0] = 1
    with pytest.raises(DatasetError, match="do not match"):
        load_index(out)


@pytest.mark.parametrize("n,shards", [(10, 3), (7, 7), (5, 8), (128, 4)])
def test_shards_cover_every_image_once(n: int, shards: int) -> None:
    ranges = [shard_range(n, shards, s) for s in range(shards)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    with pytest.raises(ValueError):
        shard_range(n, shards, shards)


def test_cli_reports_errors_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "orl.cli", "index", "--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "i.h5")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert "orl index: error: image folder" in proc.stderr and "nowhere" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_coco128_index(coco128: Path, tmp_path: Path) -> None:
    index = build_index(coco128 / "images", coco128 / "annotations" / "instances_train2017.json", threads=2)
    assert len(index) == 128 and not index.skipped
    with open(coco128 / "annotations" / "instances_train2017.json") as f:
        sizes = {im["file_name"]: (im["width"], im["height"]) for im in json.load(f)["images"]}
    assert all(sizes[n] == (w, h) for n, w, h in zip(index.file_names, index.widths, index.heights))


def test_digest_covers_pixels(tmp_path: Path) -> None:
    """Same names, ids and sizes but other pixels (e.g. demo data made with another seed): different digests."""
    _jpeg(tmp_path / "a" / "x.jpg", color=(200, 10, 10))
    _jpeg(tmp_path / "b" / "x.jpg", color=(10, 200, 10))
    first, second = build_index(tmp_path / "a"), build_index(tmp_path / "b")
    assert (first.widths.tolist(), first.heights.tolist()) == (second.widths.tolist(), second.heights.tolist())
    assert first.digest != second.digest
    features = write_artifact(tmp_path / "features.h5", stage="features", image_list_digest=first.digest,
                              params={}, arrays={})
    with pytest.raises(ArtifactError, match="disagree"):
        check_same_images(Artifact(features), write_index(second, tmp_path / "index.h5"))


def test_artifacts_of_the_older_digest_are_named_with_what_to_rerun(tmp_path: Path) -> None:
    import h5py

    _jpeg(tmp_path / "img" / "a.jpg")
    out = write_index(build_index(tmp_path / "img"), tmp_path / "index.h5")
    knn = write_artifact(tmp_path / "knn.h5", stage="knn", image_list_digest="0123", params={}, arrays={})
    for path in (out, knn):
        with h5py.File(path, "r+") as f:  # what an orl before digest version 2 wrote
            del f.attrs["image_digest_version"]
    with pytest.raises(DatasetError, match="older orl.*--forcerun index_images"):
        load_index(out)
    with pytest.raises(ArtifactError, match=r"knn.h5 was made by an older orl.*--forcerun index_images"):
        check_same_images(Artifact(knn), write_index(build_index(tmp_path / "img"), tmp_path / "new.h5"))
