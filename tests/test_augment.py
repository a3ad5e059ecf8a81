"""BYOL view recipe, RoI patch and eval transforms; reproducible per-sample views; the sharding sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from orl.data import augment as A
from orl.data.datasets import SeededSampler, TwoViewDataset, build_dataset
from orl.methods import build_training_dataset, method_recipe
from train_helpers import make_index


def _steps(t) -> list[str]:
    return [type(s).__name__ for s in t.transforms]


def test_view_recipes_follow_the_spec_order() -> None:
    common = ["RandomResizedCrop", "RandomHorizontalFlip", "RandomApply", "RandomGrayscale", "PILToTensor",
              "RandomGaussianBlur"]
    v1, v2_ = A.two_view_transforms(224)
    assert _steps(v1) == [*common, "ToDtype", "Normalize"]
    assert _steps(v2_) == [*common, "RandomSolarize", "ToDtype", "Normalize"]
    crop = v1.transforms[0]
    assert crop.scale == (0.08, 1.0) and crop.ratio == pytest.approx((3 / 4, 4 / 3))
    jitter = v1.transforms[2]
    assert jitter.p == 0.8 and jitter.transforms[0].brightness == (0.6, 1.4) and jitter.transforms[0].hue == (-0.1, 0.1)
    assert v1.transforms[3].p == 0.2
    assert (v1.transforms[5].p, v2_.transforms[5].p) == (1.0, 0.1)
    assert v1.transforms[5].sigma == (0.1, 2.0)
    assert v2_.transforms[6].p == 0.2 and v2_.transforms[6].threshold == 128


def test_blur_kernel_covers_four_sigma() -> None:
    assert [A.blur_kernel_size(s) for s in (0.1, 0.5, 1.0, 2.0)] == [3, 5, 9, 17]


def test_separable_blur_matches_torchvision_with_reflect_padding() -> None:
    x = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8)
    for sigma in (0.1, 0.8, 2.0):
        ours = A.gaussian_blur(x, torch.tensor([sigma]), 9, padding="reflect")
        ref = TF.gaussian_blur(x, [9, 9], [sigma, sigma])
        assert (ours.int() - ref.int()).abs().max() <= 1
    batch = torch.rand(2, 3, 20, 20)
    sig = torch.tensor([0.5, 1.5])
    ours = A.gaussian_blur(batch, sig, 5, padding="reflect")
    for i in range(2):
        torch.testing.assert_close(ours[i], TF.gaussian_blur(batch[i], [5, 5], [sig[i].item()] * 2), atol=1e-5, rtol=0)
    # One batched call with per-image sigmas equals per-image calls (the kernel is sized by the largest sigma).
    together = A.gaussian_blur(batch, sig)
    for i in range(2):
        torch.testing.assert_close(together[i], A.gaussian_blur(batch[i], sig[i : i + 1]), atol=1e-6, rtol=0)


def _smooth_patch(size: int = 96) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).resize((size, size), Image.BILINEAR)


def test_blur_equals_pil_gaussian_blur_at_every_sigma() -> None:
    # The authors blur with PIL's GaussianBlur(radius=sigma) (three box passes approximating an untruncated
    # Gaussian, edges repeated). Ours stays within 1 level on average and 4 at worst on a 96 px RoI patch; the old
    # 9-tap kernel (about 10% of 96 px) was off by 0.8 levels on average at sigma 2 (effective sigma 1.85).
    patch = _smooth_patch()
    x = torch.from_numpy(np.asarray(patch).copy()).permute(2, 0, 1)
    for sigma in (0.1, 0.5, 1.0, 1.5, 2.0):
        ref = torch.from_numpy(np.asarray(patch.filter(ImageFilter.GaussianBlur(radius=sigma))).copy())
        diff = (A.gaussian_blur(x, torch.tensor([sigma])).permute(1, 2, 0).int() - ref.int()).abs()
        assert diff.float().mean() < 0.35 and diff.max() <= 4, (sigma, diff.float().mean(), diff.max())
    ref = torch.from_numpy(np.asarray(patch.filter(ImageFilter.GaussianBlur(radius=2.0))).copy())
    truncated = (A.gaussian_blur(x, torch.tensor([2.0]), 9).permute(1, 2, 0).int() - ref.int()).abs()
    assert truncated.float().mean() > 0.5, "the tolerance above must tell a truncated kernel apart"


def test_each_method_has_its_own_view_recipe() -> None:
    byol, orl = method_recipe("byol"), method_recipe("orl")
    moco, simclr = method_recipe("moco_v2"), method_recipe("simclr")
    assert orl == byol and byol.views == A.BYOL_VIEWS and byol.warmup_epochs == 4 and byol.sync_bn
    assert [(v.blur_p, v.solarize_p) for v in byol.views] == [(1.0, 0.0), (0.1, 0.2)]
    assert moco.warmup_epochs == 0 and not moco.sync_bn and simclr.warmup_epochs == 10 and simclr.sync_bn
    for recipe, scale, jitter in ((moco, (0.2, 1.0), (0.4, 0.4, 0.4, 0.1)), (simclr, (0.08, 1.0), (0.8, 0.8, 0.8, 0.2))):
        v1, v2 = recipe.views
        assert v1 == v2, "the same recipe for both views"
        assert (v1.crop_scale, v1.jitter, v1.jitter_p, v1.grayscale_p) == (scale, jitter, 0.8, 0.2)
        assert (v1.blur_p, v1.blur_sigma, v1.solarize_p) == (0.5, (0.1, 2.0), 0.0)
        # ... and the transforms built from it carry those numbers.
        for t in A.two_view_transforms(64, recipe.views):
            assert _steps(t) == ["RandomResizedCrop", "RandomHorizontalFlip", "RandomApply", "RandomGrayscale",
                                 "PILToTensor", "RandomGaussianBlur", "ToDtype", "Normalize"]
            assert t.transforms[0].scale == scale
            cj = t.transforms[2].transforms[0]
            b, c, s, h = jitter
            got = [*cj.brightness, *cj.contrast, *cj.saturation, *cj.hue]
            assert got == pytest.approx([1 - b, 1 + b, 1 - c, 1 + c, 1 - s, 1 + s, -h, h])
            assert t.transforms[5].p == 0.5


def test_training_datasets_use_the_methods_recipe(tmp_path: Path) -> None:
    index, _ = make_index(tmp_path, n=2)
    for name in ("byol", "moco_v2", "simclr"):
        ds = build_training_dataset(name, index, image_size=32)
        views = method_recipe(name).views
        assert ds.transform1.transforms[0].scale == views[0].crop_scale
        assert ds.transform2.transforms[2].transforms[0].saturation == pytest.approx(
            (1 - views[1].jitter[2], 1 + views[1].jitter[2]))
        assert ("RandomSolarize" in _steps(ds.transform2)) == (views[1].solarize_p > 0)


def test_solarize_inverts_from_128() -> None:
    x = torch.tensor([[[0, 127, 128, 255]]], dtype=torch.uint8).expand(3, 1, 4)
    out = v2.RandomSolarize(threshold=A.SOLARIZE_THRESHOLD, p=1.0)(x)
    assert out[0, 0].tolist() == [0, 127, 127, 0]


def _photo(w: int = 80, h: int = 60) -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_views_are_normalised_tensors_of_the_configured_size() -> None:
    torch.manual_seed(0)
    for t in A.two_view_transforms(32):
        y = t(_photo())
        assert y.shape == (3, 32, 32) and y.dtype == torch.float32
        assert -2.2 < y.min() and y.max() < 2.7  # ImageNet-normalised [0, 1] data
    back = A.denormalize(A.eval_transform(32)(_photo()))
    assert back.min() >= -1e-5 and back.max() <= 1 + 1e-5


def test_patch_transform_keeps_the_patch_and_accepts_tensors() -> None:
    torch.manual_seed(0)
    patch = torch.randint(0, 256, (3, 24, 24), dtype=torch.uint8)
    for view in (1, 2):
        t = A.patch_view_transform(A.BYOL_VIEWS[view - 1])
        assert "RandomResizedCrop" not in _steps(t)
        assert t(patch).shape == (3, 24, 24)
        assert t(TF.to_pil_image(patch)).shape == (3, 24, 24)
    with pytest.raises(TypeError):
        A.patch_view_transform(A.BYOL_VIEWS[0])(patch.float())


def test_eval_transform_is_deterministic_resize_centre_crop() -> None:
    t = A.eval_transform(32)
    assert t.transforms[0].size == [37]  # round(32 * 256 / 224)
    assert torch.equal(t(_photo()), t(_photo())) and t(_photo()).shape == (3, 32, 32)
    assert A.eval_transform(224).transforms[0].size == [256]


def test_views_depend_only_on_seed_epoch_image(tmp_path: Path) -> None:
    index, _ = make_index(tmp_path, n=4)
    ds = build_training_dataset("byol", index, image_size=32, seed=0)
    assert isinstance(ds, TwoViewDataset)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = ds[(0, 2)], ds[(0, 2)]
    assert torch.equal(torch.get_rng_state(), before), "sampling must not consume the caller's RNG"
    assert torch.equal(a["view1"], b["view1"]) and torch.equal(a["view2"], b["view2"]) and a["index"] == 2
    assert not torch.equal(a["view1"], a["view2"])
    assert not torch.equal(a["view1"], ds[(1, 2)]["view1"]), "a new epoch draws new views"
    other_seed = build_training_dataset("byol", index, image_size=32, seed=1)
    assert not torch.equal(a["view1"], other_seed[(0, 2)]["view1"])
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        build_training_dataset("nope", index)
    with pytest.raises(ValueError, match="no training dataset"):
        build_dataset("nope", index, views=A.BYOL_VIEWS)


def test_sampler_global_batch_does_not_depend_on_the_split() -> None:
    single = SeededSampler(20, batch_size=2, num_replicas=1, rank=0, accum_steps=2, seed=3)
    ranks = [SeededSampler(20, batch_size=2, num_replicas=2, rank=r, accum_steps=1, seed=3) for r in range(2)]
    assert single.steps_per_epoch == ranks[0].steps_per_epoch == 5  # 20 // 4
    for s in (single, *ranks):
        s.set_epoch(1)
    one = single.indices()
    r0, r1 = ranks[0].indices(), ranks[1].indices()
    for step in range(5):
        # accumulation micro-batch a of the single process == DDP rank a's batch
        assert one[4 * step : 4 * step + 2] == r0[2 * step : 2 * step + 2]
        assert one[4 * step + 2 : 4 * step + 4] == r1[2 * step : 2 * step + 2]
    assert not set(r0) & set(r1) and len(set(one)) == 20
    single.set_epoch(2)
    assert single.indices() != one, "each epoch reshuffles"
    single.set_epoch(1, skip=6)
    assert [i for _, i in single] == one[6:] and len(single) == 14
    assert all(e == 1 for e, _ in single)
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        SeededSampler(3, batch_size=4)
