"""The device input pipeline: per-op agreement with PIL / torchvision, same parameters as the cpu pipeline, the
parameter distributions of every view recipe, the datasets' device output, decoding and finish_views.

Tolerances (8-bit levels, images in [0, 255]) against the cpu pipeline's PIL ops, for the same parameters:
crop + resize (antialiased bilinear) within 1 at worst and 0.4 on average (PIL rounds to 8 bits, we do not);
brightness, contrast, saturation within 1.5 at worst and 0.6 on average (PIL truncates its 8-bit blends, which
shows as a +0.4 level mean offset); hue within 16 at worst and 1.5 on average (PIL rotates the hue in 8-bit HSV);
grayscale within 1 (PIL rounds the luma); solarize exact on 8-bit input; blur within 0.5 of the cpu pipeline's
blur before its rounding. Against torchvision's float tensor ops the agreement is 1e-4 (in [0, 1] units). A whole
view of the two pipelines (same seed) differs by at most 3.5 levels on average per view, below 2.0 over all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torch.utils.data import default_collate
from torchvision.transforms.v2 import functional as TF

from orl.data import device_decode
from orl.data.images import ImageReadError, open_rgb

from orl.data import augment as A
from orl.data import device_augment as D
from orl.data.datasets import build_dataset
from orl.methods import build_training_dataset, method_recipe
from orl_helpers import make_correspondence
from train_helpers import make_index


def _photo_image(size: int = 64, seed: int = 0) -> Image.Image:
    # Smooth colourful content (upsampled noise): like photos, hue and saturation vary.
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)).resize((size, size), Image.BILINEAR)


def _float(img: Image.Image) -> torch.Tensor:
    return TF.pil_to_tensor(img)[None].float() / 255


def _levels(x: torch.Tensor) -> torch.Tensor:
    return x.squeeze(0) * 255


OPS = [
    (D.adjust_brightness, TF.adjust_brightness, (0.6, 0.9, 1.4), 1.5, 0.6),
    (D.adjust_contrast, TF.adjust_contrast, (0.6, 1.4), 1.5, 0.6),
    (D.adjust_saturation, TF.adjust_saturation, (0.2, 1.0, 1.8), 1.5, 0.6),
    (D.adjust_hue, TF.adjust_hue, (-0.2, -0.05, 0.1), 16.0, 1.5),
]


@pytest.mark.parametrize("op,ref,factors,max_tol,mean_tol", OPS, ids=["brightness", "contrast", "saturation", "hue"])
def test_jitter_ops_match_pil_and_torchvision(op, ref, factors, max_tol, mean_tol) -> None:
    for seed in range(3):
        img = _photo_image(seed=seed)
        x = _float(img)
        for f in factors:
            ours = _levels(op(x, torch.tensor([f])))
            pil = TF.pil_to_tensor(ref(img, f)).float()
            d = (ours - pil).abs()
            assert d.max() <= max_tol and d.mean() <= mean_tol, (f, d.max(), d.mean())
            torch.testing.assert_close(ours / 255, ref(x[0], f), atol=1e-4, rtol=0)


def test_jitter_ops_take_one_factor_per_image() -> None:
    x = torch.cat([_float(_photo_image(seed=s)) for s in range(3)])
    for op, ref, factors, _, _ in OPS:
        f = torch.tensor(factors[:3] if len(factors) >= 3 else (*factors, factors[0]))
        out = op(x, f)
        for i in range(3):
            torch.testing.assert_close(out[i], ref(x[i], float(f[i])), atol=1e-4, rtol=0)


def test_grayscale_solarize_blur_match_the_cpu_pipeline() -> None:
    img = _photo_image(96)
    x = _float(img)
    gray = _levels(D.grayscale(x).expand_as(x))
    assert (gray - TF.pil_to_tensor(TF.to_grayscale(img, 3)).float()).abs().max() <= 1.0
    torch.testing.assert_close(_levels(D.solarize(x)), TF.pil_to_tensor(TF.solarize(img, A.SOLARIZE_THRESHOLD)).float())
    u8 = TF.pil_to_tensor(img)
    for sigma in (0.1, 1.0, 2.0):
        ours = _levels(A.gaussian_blur(x, torch.tensor([sigma])))
        assert (ours - A.gaussian_blur(u8, torch.tensor([sigma])).float()).abs().max() <= 0.5 + 1e-3


def _pixels(raw: D.RawView, img: Image.Image) -> torch.Tensor:
    """The device side's crop + resize + flip of one worker view of `img`: float (1, 3, S, S) in [0, 1]."""
    return D.crop_resize_flip([[TF.pil_to_tensor(img)]], raw.geo[None])


def test_crop_resize_matches_pil() -> None:
    img = _photo_image(60, seed=1).resize((80, 60), Image.BILINEAR)
    for x, y, w, h, side in [(3, 5, 50, 40, 32), (0, 0, 80, 60, 96), (10, 7, 33, 21, 16), (0, 0, 60, 60, 224)]:
        ref = TF.pil_to_tensor(img.crop((x, y, x + w, y + h)).resize((side, side), Image.BILINEAR)).float()
        for flip in (False, True):
            raw = D.RawView(D.geometry_row(0, (x, y, w, h), flip, side), torch.zeros(D.PHOTO_SIZE))
            d = (_levels(_pixels(raw, img)) - (ref.flip(-1) if flip else ref)).abs()
            assert d.max() <= 1.0 + 1e-3 and d.mean() <= 0.4, ((x, y, w, h, side), d.max(), d.mean())


def test_crops_outside_the_image_are_zero_padded_as_pil() -> None:
    img = _photo_image(40)
    t = TF.pil_to_tensor(img)
    for x, y, w, h in [(-5, -3, 20, 20), (30, 30, 20, 15), (50, 50, 5, 5)]:
        ref = TF.pil_to_tensor(img.crop((x, y, x + w, y + h)))
        assert torch.equal(D.padded_crop(t, x, y, w, h), ref), (x, y, w, h)


def test_geometry_rows_are_checked() -> None:
    images = [[torch.zeros(3, 8, 8, dtype=torch.uint8)]] * 2
    rows = torch.stack([D.geometry_row(0, (0, 0, 8, 8), False, 4), D.geometry_row(0, (0, 0, 8, 8), False, 5)])
    with pytest.raises(ValueError, match="share their side"):
        D.crop_resize_flip(images, rows)
    with pytest.raises(ValueError, match="geometry rows"):
        D.crop_resize_flip(images, rows[:1])


def _view_pair(recipe: A.ViewRecipe, img: Image.Image, seed: int, size: int = 48):
    torch.manual_seed(seed)
    cpu = A.view_transform(recipe, size)(img)
    after_cpu = torch.rand(3)
    torch.manual_seed(seed)
    raw = D.DeviceViewTransform(recipe, size)(img)
    after_device = torch.rand(3)
    return cpu, raw, after_cpu, after_device


@pytest.mark.parametrize("method", ["byol", "moco_v2", "simclr"])
def test_same_seed_gives_the_same_parameters_and_nearly_the_same_view(method: str) -> None:
    means = []
    for view, recipe in enumerate(method_recipe(method).views):
        for seed in range(12):
            img = _photo_image(80, seed=seed % 4)
            cpu, raw, after_cpu, after_device = _view_pair(recipe, img, seed)
            # The worker consumed exactly the cpu pipeline's draws: the streams continue identically.
            assert torch.equal(after_cpu, after_device), (view, seed)
            assert raw.geo.shape == (D.GEO_SIZE,) and raw.geo[D.SIDE] == 48
            dev = D.photometric(_pixels(raw, img), raw.photo[None])[0]
            d = (A.denormalize(cpu) - A.denormalize(dev)).abs() * 255
            assert d.mean() < 3.5, (view, seed, d.mean(), raw.photo)
            means.append(float(d.mean()))
    assert np.mean(means) < 2.0


def test_a_changed_parameter_changes_the_view() -> None:
    """The tolerance above tells a wrong parameter apart: flipping one coin moves the view far more."""
    recipe = A.BYOL_VIEWS[1]
    img = _photo_image(80)
    cpu, raw, _, _ = _view_pair(recipe, img, seed=3)
    for slot in (D.GRAY, D.SOLARIZE):
        photo = raw.photo.clone()
        photo[slot] = 1 - photo[slot]
        dev = D.photometric(_pixels(raw, img), photo[None])[0]
        assert ((A.denormalize(cpu) - A.denormalize(dev)).abs() * 255).mean() > 5
    geo = raw.geo.clone()
    geo[D.FLIP] = 1 - geo[D.FLIP]
    dev = D.photometric(_pixels(D.RawView(geo, raw.photo), img), raw.photo[None])[0]
    assert ((A.denormalize(cpu) - A.denormalize(dev)).abs() * 255).mean() > 5


def _draws(recipe: A.ViewRecipe, n: int) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.stack([D.draw_photometric(recipe) for _ in range(n)])


def _rate_ok(flags: torch.Tensor, p: float) -> bool:
    n = len(flags)
    sd = max((p * (1 - p) / n) ** 0.5, 1e-9)
    return abs(float(flags.float().mean()) - p) <= 5 * sd + 1e-12


@pytest.mark.parametrize("method", ["byol", "moco_v2", "simclr", "orl"])
def test_parameter_distributions_follow_each_views_recipe(method: str) -> None:
    n = 3000
    for recipe in method_recipe(method).views:
        p = _draws(recipe, n)
        jitter = p[:, D.JITTER] > 0
        assert _rate_ok(jitter, recipe.jitter_p)
        assert _rate_ok(p[:, D.GRAY], recipe.grayscale_p)
        assert _rate_ok(p[:, D.BLUR], recipe.blur_p)
        assert _rate_ok(p[:, D.SOLARIZE], recipe.solarize_p)
        on = p[jitter]
        for slot, r in zip(D.FACTORS, D.jitter_ranges(recipe)):
            lo, hi = r
            assert stats.kstest(on[:, slot].numpy(), stats.uniform(lo, hi - lo).cdf).pvalue > 1e-4, slot
        # Each of the 24 orders of the four factors equally often (chi-square), and neutral values when off.
        perms = on[:, D.ORDER : D.ORDER + 4].long()
        codes = (perms * torch.tensor([64, 16, 4, 1])).sum(1)
        counts = torch.unique(codes, return_counts=True)[1]
        assert len(counts) == 24 and stats.chisquare(counts.numpy()).pvalue > 1e-4
        off = p[~jitter]
        assert torch.equal(off[:, list(D.FACTORS)], torch.tensor(D.NEUTRAL).expand(len(off), 4))
        lo, hi = recipe.blur_sigma
        assert stats.kstest(p[:, D.SIGMA].numpy(), stats.uniform(lo, hi - lo).cdf).pvalue > 1e-4


def test_geometry_draws_follow_random_resized_crop() -> None:
    """Boxes inside the image with area fraction in the recipe's scale range and aspect in [3/4, 4/3] (up to
    rounding), flips at rate 0.5, for every method's views."""
    img = _photo_image(60).resize((90, 60))
    for method in ("byol", "moco_v2", "simclr"):
        for recipe in method_recipe(method).views:
            torch.manual_seed(0)
            geo = torch.stack([D.DeviceViewTransform(recipe, 32)(img).geo for _ in range(2000)]).double()
            x, y, w, h = (geo[:, c] for c in (D.LEFT, D.TOP, D.WIDTH, D.HEIGHT))
            assert (x >= 0).all() and (y >= 0).all() and (x + w <= 90).all() and (y + h <= 60).all()
            area = w * h / (90 * 60)
            lo, hi = recipe.crop_scale
            assert area.min() >= lo * 0.9 and area.max() <= hi
            aspect = w / h
            assert aspect.min() >= 0.75 * 0.9 and aspect.max() <= 4 / 3 / 0.9
            assert _rate_ok(geo[:, D.FLIP], 0.5) and (geo[:, D.SIDE] == 32).all()


def test_byol_views_have_the_specs_probabilities() -> None:
    v1, v2 = (_draws(r, 2000) for r in A.BYOL_VIEWS)
    assert v1[:, D.BLUR].mean() == 1.0 and v1[:, D.SOLARIZE].sum() == 0
    assert abs(v2[:, D.BLUR].mean() - 0.1) < 0.035 and abs(v2[:, D.SOLARIZE].mean() - 0.2) < 0.045
    assert abs(v1[:, D.GRAY].mean() - 0.2) < 0.045 and abs(v1[:, D.JITTER].mean() - 0.8) < 0.045


def test_photometric_applies_each_samples_own_parameters() -> None:
    """A batch of mixed parameters equals the samples one by one (up to the blur kernel sized by the largest sigma)."""
    raws, pixels = [], []
    for seed in range(6):
        torch.manual_seed(seed)
        img = _photo_image(60, seed)
        raws.append(D.DeviceViewTransform(A.BYOL_VIEWS[seed % 2], 32)(img))
        pixels.append(_pixels(raws[-1], img))
    batch = D.photometric(torch.cat(pixels), torch.stack([r.photo for r in raws]))
    for i, r in enumerate(raws):
        torch.testing.assert_close(batch[i], D.photometric(pixels[i], r.photo[None])[0], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="photometric parameters"):
        D.photometric(batch.to(torch.uint8), torch.zeros(6, 3))


def test_two_view_datasets_of_the_device_pipeline(tmp_path: Path) -> None:
    index, _ = make_index(tmp_path, n=4)
    for name in ("byol", "moco_v2", "simclr"):
        dev = build_training_dataset(name, index, image_size=32, pipeline="device")
        cpu = build_training_dataset(name, index, image_size=32, pipeline="cpu")
        s = dev[(1, 2)]
        assert set(s) == {"images", "image_paths", "view1_geo", "view1_photo", "view2_geo", "view2_photo", "index"}
        assert s["images"][0].dtype == torch.uint8 and s["view1_photo"].shape == (D.PHOTO_SIZE,)
        batch = D.finish_views(D.collate_samples([dev[(0, i)] for i in range(4)]), "cpu")
        ref = default_collate([cpu[(0, i)] for i in range(4)])
        assert set(batch) == set(ref)
        for key in ("view1", "view2"):
            assert batch[key].dtype == torch.float32 and batch[key].shape == ref[key].shape
            assert ((A.denormalize(batch[key]) - A.denormalize(ref[key])).abs() * 255).mean() < 3.5
        assert D.finish_views(ref, "cpu").keys() == ref.keys()  # a cpu batch passes through


def test_orl_dataset_of_the_device_pipeline(tmp_path: Path) -> None:
    index, _ = make_index(tmp_path, n=4)
    corr = make_correspondence(index, tmp_path / "corr.h5")
    kw = dict(correspondence=corr, roi_size=16)
    dev = build_dataset("orl", index, method_recipe("orl").views, image_size=32, pipeline="device", **kw)
    cpu = build_dataset("orl", index, method_recipe("orl").views, image_size=32, pipeline="cpu", **kw)
    views = ("view1", "view2", "intra1", "intra2", "inter1", "inter2")
    s = dev[(0, 1)]
    assert set(s) == {*(v + "_geo" for v in views), *(v + "_photo" for v in views), "images", "image_paths", "index",
                      "neighbor"}
    assert s["intra1_geo"][D.SIDE] == 16 and len(s["images"]) == (1 if s["neighbor"] == 1 else 2)
    batch = D.finish_views(D.collate_samples([dev[(0, i)] for i in range(4)]), "cpu")
    ref = default_collate([cpu[(0, i)] for i in range(4)])
    assert torch.equal(batch["neighbor"], ref["neighbor"])  # the same RoI draws
    for key in views:
        assert ((A.denormalize(batch[key]) - A.denormalize(ref[key])).abs() * 255).mean() < 3.5, key


def test_pipeline_names() -> None:
    assert D.resolve_pipeline("auto", "cpu") == "cpu" and D.resolve_pipeline("auto", "cuda") == "device"
    assert D.resolve_pipeline("device", "cpu") == "device"
    with pytest.raises(ValueError, match="pipeline"):
        D.resolve_pipeline("gpu", "cpu")


def _jpeg(path: Path, mode: str = "RGB", size: tuple[int, int] = (40, 30)) -> Path:
    img = _photo_image(48, seed=2).resize(size, Image.BILINEAR)
    (img.convert("L") if mode == "L" else img.convert(mode)).save(path, quality=90)
    return path


def test_worker_decoding_gives_pils_pixels(tmp_path: Path) -> None:
    """decode_jpeg and PIL are both libjpeg-turbo: identical pixels (also on the 128 coco128 photos, measured)."""
    files = [_jpeg(tmp_path / "rgb.jpg"), _jpeg(tmp_path / "gray.jpg", "L"), _jpeg(tmp_path / "cmyk.jpg", "CMYK")]
    _photo_image(20).save(tmp_path / "a.png")
    for path in [*files, tmp_path / "a.png"]:
        ref = TF.pil_to_tensor(open_rgb(path))
        img, pixels = device_decode.load_source(path, "worker")
        assert img.size == (ref.shape[2], ref.shape[1]) and torch.equal(pixels, ref), path.name
        img, shipped = device_decode.load_source(path, "device")
        # Baseline RGB / gray JPEGs travel encoded; CMYK and PNG are decoded in the worker.
        assert device_decode.is_encoded(shipped) == (path.name in ("rgb.jpg", "gray.jpg")), path.name
        if device_decode.is_encoded(shipped):
            assert torch.equal(device_decode.decode_on_device([shipped], [str(path)], "cpu")[0], ref)
    with pytest.raises(ValueError, match="decode"):
        device_decode.load_source(files[0], "gpu")


def test_a_broken_jpeg_is_named(tmp_path: Path) -> None:
    good = _jpeg(tmp_path / "good.jpg")
    bad = tmp_path / "bad.jpg"
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(ImageReadError, match="bad.jpg"):
        device_decode.load_source(bad, "worker")
    encoded = [device_decode.load_source(p, "device")[1] for p in (good, bad)]
    with pytest.raises(ImageReadError, match="bad.jpg"):
        device_decode.decode_on_device(encoded, [str(good), str(bad)], "cpu")


@pytest.mark.parametrize("method", ["byol", "orl"])
def test_device_decoding_builds_the_same_batch(tmp_path: Path, method: str) -> None:
    index, _ = make_index(tmp_path, n=4)  # JPEGs
    kw = dict(correspondence=make_correspondence(index, tmp_path / "corr.h5"), roi_size=16) if method == "orl" else {}
    batches = []
    for decode in ("worker", "device"):
        ds = build_training_dataset(method, index, image_size=32, pipeline="device", decode=decode, **kw)
        samples = [ds[(0, i)] for i in range(4)]
        assert all(device_decode.is_encoded(t) == (decode == "device") for s in samples for t in s["images"])
        batches.append(D.finish_views(D.collate_samples(samples), "cpu"))
    assert batches[0].keys() == batches[1].keys() and "images" not in batches[0]
    for key, value in batches[0].items():
        assert torch.equal(value, batches[1][key]), key


def test_collate_keeps_images_of_any_size() -> None:
    a = {"images": [torch.zeros(3, 4, 5, dtype=torch.uint8)], "image_paths": ["a"], "x": torch.ones(2)}
    b = {"images": [torch.zeros(3, 6, 2, dtype=torch.uint8)], "image_paths": ["b"], "x": torch.zeros(2)}
    out = D.collate_samples([a, b])
    assert [t.shape[1:] for imgs in out["images"] for t in imgs] == [(4, 5), (6, 2)]
    assert out["image_paths"] == [["a"], ["b"]] and out["x"].shape == (2, 2)
    plain = [{"view1": torch.ones(3, 2, 2), "index": 0}, {"view1": torch.zeros(3, 2, 2), "index": 1}]
    ref = default_collate(plain)
    got = D.collate_samples(plain)
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)


@pytest.mark.parametrize("method", ["byol", "orl"])
def test_device_views_of_real_photos_match_the_cpu_pipeline(coco128: Path, tmp_path: Path, method: str) -> None:
    """224 px views (96 px RoIs) of 8 coco128 photos: the same draws, and pixels within 2 levels on average."""
    from orl.data.image_index import build_index

    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sorted((coco128 / "images").glob("*.jpg"))[:8]:
        (folder / p.name).symlink_to(p)
    index = build_index(folder)
    kw = dict(correspondence=make_correspondence(index, tmp_path / "corr.h5"), roi_size=96) if method == "orl" else {}
    cpu = build_training_dataset(method, index, image_size=224, pipeline="cpu", **kw)
    dev = build_training_dataset(method, index, image_size=224, pipeline="device", decode="device", **kw)
    ref = D.collate_samples([cpu[(3, i)] for i in range(8)])
    batch = D.finish_views(D.collate_samples([dev[(3, i)] for i in range(8)]), "cpu")
    assert batch.keys() == ref.keys()
    for key, value in ref.items():
        if value.dtype != torch.float32:
            assert torch.equal(batch[key], value), key
            continue
        d = (A.denormalize(batch[key]) - A.denormalize(value)).abs() * 255
        assert d.flatten(1).mean(1).max() < 3.5 and d.mean() < 2.0, (key, d.flatten(1).mean(1))


def _raw_batch(n: int = 6, size: int = 16) -> dict:
    """A collated device-pipeline batch of random images with BYOL's two views."""
    torch.manual_seed(0)
    samples = []
    for i in range(n):
        img = torch.randint(0, 256, (3, 30 + i, 40), dtype=torch.uint8)
        pil = Image.new("RGB", (40, 30 + i))
        views = [D.DeviceViewTransform(recipe, size)(pil) for recipe in A.BYOL_VIEWS]
        samples.append({"images": [img], "image_paths": [f"{i}.jpg"], **D.view_entries("view1", views[0]),
                        **D.view_entries("view2", views[1])})
    return D.collate_samples(samples)


def test_finish_views_sends_each_views_parameters_in_one_non_blocking_copy(monkeypatch) -> None:
    """On the 'meta' device (a stand-in for CUDA: any read of device data back to the host fails there), a batch's
    CPU -> device copies are its images plus one per view key, none blocking; the constants are made once."""
    real_to, copies = torch.Tensor.to, []

    def counting_to(self, *args, **kwargs):
        out = real_to(self, *args, **kwargs)
        if out.device != self.device and self.device.type == "cpu":
            image = self.dtype == torch.uint8 and self.ndim == 3
            copies.append(("image" if image else "rows", bool(kwargs.get("non_blocking", False))))
        return out

    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    D.finish_views(_raw_batch(), "meta")  # the first batch also makes the constants
    copies.clear()
    out = D.finish_views(_raw_batch(), "meta")
    assert out["view1"].device.type == "meta" and out["view2"].shape == (6, 3, 16, 16)
    assert all(non_blocking for _, non_blocking in copies), copies
    assert sorted(kind for kind, _ in copies) == ["image"] * 6 + ["rows"] * 2, copies


def test_the_gpu_blur_has_one_shape_per_batch_size_and_the_same_values(monkeypatch) -> None:
    """fixed_shapes (CUDA's default): batches with different blur draws run convolutions of the same shape (so
    cudnn.benchmark tunes once), with the values of blurring only the drawn rows."""
    real_conv, shapes = torch.nn.functional.conv2d, []

    def recording_conv(x, w, *args, **kwargs):
        shapes.append((tuple(x.shape), tuple(w.shape)))
        return real_conv(x, w, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv2d", recording_conv)
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(8, 3, 20, 20, generator=g)
    seen = {}
    for blurred, sigma in (([1, 4], 0.5), ([0, 2, 3, 5, 7], 1.9)):
        photo = torch.zeros(8, D.PHOTO_SIZE)
        photo[blurred, D.BLUR] = 1.0
        photo[:, D.SIGMA] = torch.linspace(0.1, sigma, 8)
        for fixed in (True, False):
            shapes.clear()
            out = D.photometric(pixels.clone(), photo, fixed_shapes=fixed)
            seen.setdefault(fixed, []).append(list(shapes))
            if fixed:
                ref = out
        torch.testing.assert_close(ref, out, atol=1e-5, rtol=0)
    assert seen[True][0] == seen[True][1] and seen[False][0] != seen[False][1]
