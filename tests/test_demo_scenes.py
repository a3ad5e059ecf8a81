"""The built-in demo scene generator: determinism, COCO validity, mask/box agreement, occlusion, the stage."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from orl.data import demo_scenes
from orl.data.demo_scenes import CATEGORIES, generate_demo_dataset, render_scene
from orl.stages import demo_data

# pycocotools' decode trips a NumPy 2 deprecation warning inside its own code; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SMALL = dict(num_train=12, num_val=4, image_size=96, min_objects=2, max_objects=6)
KEYS = ("train_images", "val_images", "train_annotations", "val_annotations")


def _files(root: Path) -> dict[str, bytes]:
    """Every file under root, by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small demo dataset shared by the read-only tests."""
    return generate_demo_dataset(tmp_path_factory.mktemp("demo") / "data", seed=7, **SMALL)


@pytest.fixture(scope="module")
def scenes() -> list[demo_scenes.Scene]:
    """A moderate sample of small scenes, with full (unoccluded) masks for the occlusion checks."""
    rng = np.random.default_rng(123)
    return [render_scene(rng, 64, 2, 6) for _ in range(40)]


def test_layout_and_paths(dataset: dict[str, Path]) -> None:
    root = dataset["train_images"].parent
    assert set(dataset) == set(KEYS)
    assert sorted(p.name for p in root.iterdir()) == ["annotations", "train", "val"]
    assert not list(root.parent.glob("*.tmp-*"))  # the build folder was renamed, not left behind
    for split, count in (("train", SMALL["num_train"]), ("val", SMALL["num_val"])):
        doc = json.loads(dataset[f"{split}_annotations"].read_text())
        ids = [im["id"] for im in doc["images"]]
        assert ids == sorted(set(ids)) and len(ids) == count
        for im in doc["images"]:
            assert im["file_name"] == f"{im['id']:06d}.jpg"
            with Image.open(dataset[f"{split}_images"] / im["file_name"]) as img:
                assert img.mode == "RGB" and img.size == (96, 96) == (im["width"], im["height"])
        assert sorted(p.name for p in dataset[f"{split}_images"].iterdir()) == [im["file_name"] for im in doc["images"]]
        ann_ids = [a["id"] for a in doc["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids)


def test_same_seed_same_bytes(dataset: dict[str, Path], tmp_path: Path) -> None:
    again = generate_demo_dataset(tmp_path / "again", seed=7, **SMALL)
    first, second = _files(dataset["train_images"].parent), _files(again["train_images"].parent)
    assert len(first) == SMALL["num_train"] + SMALL["num_val"] + 2
    assert first == second


def test_different_seed_differs(dataset: dict[str, Path], tmp_path: Path) -> None:
    other = _files(generate_demo_dataset(tmp_path / "other", seed=8, **SMALL)["train_images"].parent)
    first = _files(dataset["train_images"].parent)
    assert first.keys() == other.keys()
    assert all(first[name] != other[name] for name in first if name.endswith(".jpg"))
    assert first["annotations/instances_train.json"] != other["annotations/instances_train.json"]


def test_splits_use_different_seeds(dataset: dict[str, Path]) -> None:
    train = (dataset["train_images"] / "000001.jpg").read_bytes()
    val = (dataset["val_images"] / "000001.jpg").read_bytes()
    assert train != val


def test_images_do_not_depend_on_split_size(dataset: dict[str, Path], tmp_path: Path) -> None:
    fewer = generate_demo_dataset(tmp_path / "fewer", seed=7, **{**SMALL, "num_train": 3, "num_val": 1})
    for name in ("000001.jpg", "000002.jpg", "000003.jpg"):
        assert (fewer["train_images"] / name).read_bytes() == (dataset["train_images"] / name).read_bytes()


def test_pycocotools_loads_and_categories(dataset: dict[str, Path]) -> None:
    assert 8 <= len(CATEGORIES) <= 10
    assert [c["id"] for c in CATEGORIES] == list(range(1, len(CATEGORIES) + 1))
    assert len({c["name"] for c in CATEGORIES}) == len(CATEGORIES)
    for split in ("train", "val"):
        coco = COCO(str(dataset[f"{split}_annotations"]))
        assert len(coco.getImgIds()) == SMALL[f"num_{split}"]
        assert coco.loadCats(coco.getCatIds()) == CATEGORIES
        assert all(c["supercategory"] for c in coco.loadCats(coco.getCatIds()))


def test_masks_boxes_and_areas_agree(dataset: dict[str, Path]) -> None:
    coco = COCO(str(dataset["train_annotations"]))
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        union = np.zeros((info["height"], info["width"]), dtype=int)
        for ann in anns:
            assert ann["iscrowd"] == 0 and ann["category_id"] in coco.getCatIds()
            mask = coco.annToMask(ann).astype(bool)
            ys, xs = np.nonzero(mask)
            tight = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["bbox"] == [float(v) for v in tight]
            assert ann["bbox"] == mask_utils.toBbox(ann["segmentation"]).tolist()
            assert ann["area"] == mask.sum() == mask_utils.area(ann["segmentation"])
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= info["width"] and y + h <= info["height"]
            assert ann["area"] >= demo_scenes.MIN_VISIBLE_PIXELS
            union += mask
        assert union.max() <= 1  # visible parts never overlap: occluded pixels belong to the object on top


def test_objects_per_image(dataset: dict[str, Path], tmp_path: Path) -> None:
    coco = COCO(str(dataset["train_annotations"]))
    counts = [len(coco.getAnnIds(imgIds=i)) for i in coco.getImgIds()]
    assert all(SMALL["min_objects"] <= n <= SMALL["max_objects"] for n in counts)
    assert len(set(counts)) > 1  # the count really varies
    exact = generate_demo_dataset(
        tmp_path / "three", seed=1, num_train=4, num_val=1, image_size=96, min_objects=3, max_objects=3
    )
    coco = COCO(str(exact["train_annotations"]))
    assert all(len(coco.getAnnIds(imgIds=i)) == 3 for i in coco.getImgIds())


def test_all_categories_appear(scenes: list[demo_scenes.Scene]) -> None:
    seen = {obj.category_id for scene in scenes for obj in scene.objects}
    assert seen == {c["id"] for c in CATEGORIES}


def test_intensity_does_not_give_the_category_away(scenes: list[demo_scenes.Scene]) -> None:
    by_category: dict[int, list[np.ndarray]] = {}
    for scene in scenes:
        for obj in scene.objects:
            by_category.setdefault(obj.category_id, []).append(scene.image[obj.visible_mask].mean(axis=0))
    for colours in by_category.values():
        assert np.std(np.stack(colours), axis=0).mean() > 20  # instances of one category span many grey levels


def test_occlusion_happens_and_visible_parts_suffice(scenes: list[demo_scenes.Scene]) -> None:
    occluded = 0
    for scene in scenes:
        for k, obj in enumerate(scene.objects):
            visible = int(obj.visible_mask.sum())
            assert not (obj.visible_mask & ~obj.full_mask).any()
            assert visible >= demo_scenes.MIN_VISIBLE_FRACTION * obj.full_area
            assert visible >= demo_scenes.MIN_VISIBLE_PIXELS
            later = [o.visible_mask for o in scene.objects[k + 1 :]]
            if any((obj.full_mask & m).any() for m in later):
                occluded += 1
                assert visible < obj.full_mask.sum()
    assert occluded >= 5  # several objects are partly hidden behind later ones


def test_rejects_bad_parameters(tmp_path: Path) -> None:
    for bad in (dict(min_objects=0), dict(min_objects=4, max_objects=3), dict(image_size=16), dict(num_train=0)):
        with pytest.raises(ValueError):
            generate_demo_dataset(tmp_path / "bad", **{**SMALL, **bad})
    assert not list(tmp_path.iterdir())


def test_replaces_existing_output(tmp_path: Path) -> None:
    out = tmp_path / "data"
    (out / "train").mkdir(parents=True)
    (out / "train" / "stale.jpg").write_bytes(b"old")
    generate_demo_dataset(out, seed=0, num_train=2, num_val=1, image_size=64)
    assert sorted(p.name for p in (out / "train").iterdir()) == ["000001.jpg", "000002.jpg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_crash_leaves_previous_output_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "data"
    generate_demo_dataset(out, seed=0, num_train=2, num_val=1, image_size=64)
    before = _files(out)
    calls = []

    def failing(*args: object) -> demo_scenes.Scene:
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("simulated crash")
        return render_scene(*args)

    monkeypatch.setattr(demo_scenes, "render_scene", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_demo_dataset(out, seed=5, num_train=4, num_val=1, image_size=64)
    assert _files(out) == before  # the old dataset is intact and no half-written one replaced it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_stage_runs_via_argparse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    demo_data.add_arguments(parser)
    out = tmp_path / "demo"
    flags = ["--seed", "3", "--num-train", "5", "--num-val", "2", "--image-size", "64"]
    args = parser.parse_args(["--out", str(out), *flags, "--min-objects", "1", "--max-objects", "3"])
    demo_data.run(args)
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "5 train images" in printed[0] and "2 val images" in printed[0]
    expected = generate_demo_dataset(
        tmp_path / "direct", seed=3, num_train=5, num_val=2, image_size=64, min_objects=1, max_objects=3
    )
    assert _files(out) == _files(expected["train_images"].parent)
    defaults = parser.parse_args(["--out", str(out)])
    assert (defaults.num_train, defaults.num_val, defaults.image_size) == (256, 64, 128)
    assert (defaults.min_objects, defaults.max_objects, defaults.seed) == (1, 3, 0)
    worldly = parser.parse_args(["--out", str(out), "--world", "saturation=1", "scale=[0.1,0.2]"])
    assert demo_data.parse_world(worldly.world) == demo_scenes.World(saturation=1, scale=(0.1, 0.2))
    for bad in (["nonsense=1"], ["saturation"], ["scale=[0.1,"]):
        with pytest.raises(ValueError):
            demo_data.parse_world(bad)


# What learnability depends on (issue 13): large whole objects, grey so colour is no shortcut, shape-defined classes.

def test_default_objects_are_large_whole_and_grey() -> None:
    rng = np.random.default_rng(5)
    size = 128
    sides, fills = [], []
    for _ in range(30):
        scene = render_scene(rng, size, 1, 3)
        assert 1 <= len(scene.objects) <= 3
        for obj in scene.objects:
            assert obj.full_mask.sum() == obj.full_area  # whole object inside the image: no border clipping
            ys, xs = np.nonzero(obj.full_mask)
            sides.append(max(xs.max() - xs.min(), ys.max() - ys.min()) + 1)
            fills.append(obj.full_mask.sum() / size**2)
        pixels = scene.image.reshape(-1, 3).astype(float)
        assert np.abs(pixels - pixels.mean(axis=1, keepdims=True)).mean() < 4  # grey up to JPEG-free noise
    assert np.median(sides) >= 0.3 * size and min(sides) >= 0.2 * size
    assert np.median(fills) >= 0.04  # an object covers several percent of the scene (old world: ~1 %)


def test_categories_differ_by_shape_alone_in_a_flat_world() -> None:
    world = demo_scenes.World(textured=False)
    rng = np.random.default_rng(11)
    ratio: dict[int, list[float]] = {}
    for _ in range(60):
        for obj in render_scene(rng, 96, 1, 3, world).objects:
            ys, xs = np.nonzero(obj.full_mask)
            radius = np.hypot(ys - ys.mean(), xs - xs.mean()).max() + 0.5
            ratio.setdefault(obj.category_id, []).append(obj.full_area / (np.pi * radius**2))
    assert set(ratio) == {c["id"] for c in CATEGORIES}
    means = np.array([np.mean(v) for v in ratio.values()])
    spreads = np.array([np.std(v) for v in ratio.values()])
    assert means.max() - means.min() > 0.4  # from a thin cross or star to a full disc
    assert spreads.mean() < 0.08  # one category, one shape: size, rotation and colour do not change it


def test_world_knobs_are_deterministic_and_recorded(tmp_path: Path) -> None:
    colourful = demo_scenes.World(saturation=1.0, background_saturation=1.0, num_categories=4)
    a = generate_demo_dataset(tmp_path / "a", seed=2, num_train=3, num_val=1, image_size=64, world=colourful)
    b = generate_demo_dataset(tmp_path / "b", seed=2, num_train=3, num_val=1, image_size=64, world=colourful)
    grey = generate_demo_dataset(tmp_path / "c", seed=2, num_train=3, num_val=1, image_size=64)
    assert _files(a["train_images"].parent) == _files(b["train_images"].parent)
    assert _files(a["train_images"].parent) != _files(grey["train_images"].parent)
    doc = json.loads(a["train_annotations"].read_text())
    assert doc["info"]["params"]["world"]["saturation"] == 1.0
    assert [c["id"] for c in doc["categories"]] == [1, 2, 3, 4]
    assert {ann["category_id"] for ann in doc["annotations"]} <= {1, 2, 3, 4}
    with pytest.raises(ValueError, match="num_categories"):
        demo_scenes.World(num_categories=11)
