"""The `device` input pipeline: workers crop and flip, the training device applies the photometric ops in batches.

Worker side (`DeviceViewTransform`, `DevicePatchTransform`): decode, RandomResizedCrop + resize (or the RoI crop +
resize done by the ORL dataset), horizontal flip, all on the PIL image as in the `cpu` pipeline, then a uint8
(3, S, S) tensor plus the view's photometric parameters (`draw_photometric`). The parameters are drawn from the
per-sample torch RNG in exactly the order and number the cpu pipeline's transforms consume it (RandomApply coin,
ColorJitter's randperm and four factors, grayscale coin, blur coin + sigma, solarize coin), so for the same
(seed, epoch, image) both pipelines use the same crop and the same parameters, and resume stays exact.

Device side (`finish_views`): each uint8 view with a `<key>_photo` parameter row becomes a normalised float view:
colour jitter in each sample's own order of the four factors, grayscale, separable Gaussian blur (replicate
padding, untruncated, as PIL), solarize, ImageNet normalisation; float32 in [0, 1] throughout (no 8-bit rounding
between ops). Plain torch ops: the same code runs on CPU tensors (tested) and on CUDA.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from PIL import Image
from torchvision.transforms import v2

from orl.data.augment import (IMAGENET_MEAN, IMAGENET_STD, SOLARIZE_THRESHOLD, ViewRecipe, _to_pil,
                              blur_kernel_size, gaussian_blur)

PIPELINES = ("cpu", "device")
PHOTO_SUFFIX = "_photo"

# Layout of one parameter row (float32). Neutral values where a step is off: the op is then the identity.
JITTER, ORDER, BRIGHTNESS, CONTRAST, SATURATION, HUE, GRAY, BLUR, SIGMA, SOLARIZE = 0, 1, 5, 6, 7, 8, 9, 10, 11, 12
PHOTO_SIZE = 13
FACTORS = (BRIGHTNESS, CONTRAST, SATURATION, HUE)  # ColorJitter's fn ids 0..3 in this order
NEUTRAL = (1.0, 1.0, 1.0, 0.0)
# Gray level of torchvision's rgb_to_grayscale (ITU-R 601-2 luma, as PIL's "L" conversion).
LUMA = (0.2989, 0.587, 0.114)


class RawView(NamedTuple):
    """A worker's output for one view: uint8 (3, S, S) pixels after the geometric ops, and its parameter row."""

    pixels: torch.Tensor
    photo: torch.Tensor


def jitter_ranges(recipe: ViewRecipe) -> list[tuple[float, float] | None]:
    """ColorJitter's (low, high) factor ranges of the recipe, None for a strength of 0 (torchvision draws nothing)."""
    b, c, s, h = recipe.jitter
    ranges = [(max(0.0, 1 - b), 1 + b), (max(0.0, 1 - c), 1 + c), (max(0.0, 1 - s), 1 + s), (-h, h)]
    return [None if strength == 0 else r for strength, r in zip(recipe.jitter, ranges)]


def draw_photometric(recipe: ViewRecipe) -> torch.Tensor:
    """One view's photometric parameters from the global torch RNG, consuming it as the cpu pipeline does."""
    p = torch.zeros(PHOTO_SIZE)
    p[ORDER : ORDER + 4] = torch.arange(4.0)
    p[list(FACTORS)] = torch.tensor(NEUTRAL)
    # v2.RandomApply / _RandomApplyTransform: the step runs when torch.rand(1) < p.
    if torch.rand(1) < recipe.jitter_p:
        p[JITTER] = 1.0
        p[ORDER : ORDER + 4] = torch.randperm(4).float()
        for slot, r in zip(FACTORS, jitter_ranges(recipe)):
            if r is not None:
                p[slot] = float(torch.empty(1).uniform_(r[0], r[1]).item())
    p[GRAY] = float(torch.rand(1) < recipe.grayscale_p)
    if recipe.blur_p > 0:
        coin, u = torch.rand(2).tolist()  # as orl.data.augment.RandomGaussianBlur
        p[BLUR] = float(coin < recipe.blur_p)
        p[SIGMA] = recipe.blur_sigma[0] + (recipe.blur_sigma[1] - recipe.blur_sigma[0]) * u
    if recipe.solarize_p > 0:
        p[SOLARIZE] = float(torch.rand(1) < recipe.solarize_p)
    return p


def _pil_to_uint8(img: Image.Image) -> torch.Tensor:
    return v2.functional.pil_to_tensor(img)


class DeviceViewTransform:
    """Worker half of one view: PIL image -> RawView (RandomResizedCrop + resize + flip, then the parameters)."""

    def __init__(self, recipe: ViewRecipe, size: int = 224) -> None:
        self.recipe = recipe
        # The same transform objects as the cpu pipeline (orl.data.augment.view_transform), same RNG use.
        self.geometric = v2.Compose([
            v2.RandomResizedCrop(size, scale=recipe.crop_scale, ratio=(3 / 4, 4 / 3),
                                 interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
            v2.RandomHorizontalFlip(p=0.5),
        ])

    def __call__(self, img: Image.Image) -> RawView:
        pixels = _pil_to_uint8(self.geometric(img))
        return RawView(pixels, draw_photometric(self.recipe))


class DevicePatchTransform:
    """Worker half of an ORL RoI patch (already cropped + resized): flip, then the parameters."""

    def __init__(self, recipe: ViewRecipe) -> None:
        self.recipe = recipe
        self.flip = v2.RandomHorizontalFlip(p=0.5)

    def __call__(self, patch: Any) -> RawView:
        pixels = _pil_to_uint8(self.flip(_to_pil(patch)))
        return RawView(pixels, draw_photometric(self.recipe))


def view_entries(key: str, view: torch.Tensor | RawView) -> dict[str, torch.Tensor]:
    """The sample-dict entries of one view: {key: tensor} (cpu pipeline) or {key: uint8, key_photo: params}."""
    if isinstance(view, RawView):
        return {key: view.pixels, key + PHOTO_SUFFIX: view.photo}
    return {key: view}


# ------------------------------------------------------------------------------------------ batched ops, [0, 1]
def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) float -> (N, 1, H, W) luma."""
    w = torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with black: x * f, one factor per image."""
    return (x * _per_sample(factor, x)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean gray level."""
    f = _per_sample(factor, x)
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return (x * f + mean * (1 - f)).clamp_(0, 1)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's own gray version."""
    f = _per_sample(factor, x)
    return (x * f + grayscale(x) * (1 - f)).clamp_(0, 1)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> HSV with hue in [0, 1)."""
    r, g, b = x.unbind(dim=1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    delta = maxc - minc
    grey = delta == 0
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    d = torch.where(grey, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(grey, torch.zeros_like(h), (h / 6.0).remainder(1.0))
    return torch.stack((h, s, maxc), dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of rgb_to_hsv."""
    h, s, v = x.unbind(dim=1)
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = i.long().remainder(6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    # Sector i -> (r, g, b) from (v, q, p, t): the standard table, gathered per pixel.
    table = torch.tensor([[0, 3, 2], [1, 0, 2], [2, 0, 3], [2, 1, 0], [3, 2, 0], [0, 2, 1]], device=x.device)
    candidates = torch.stack((v, q, p, t), dim=1)  # (N, 4, H, W)
    idx = table[i].permute(0, 3, 1, 2)  # (N, 3, H, W)
    return candidates.gather(1, idx)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by factor (a fraction of the circle, in [-0.5, 0.5]) per image."""
    hsv = rgb_to_hsv(x)
    h = (hsv[:, 0] + factor.to(device=x.device, dtype=x.dtype).view(-1, 1, 1)).remainder(1.0)
    return hsv_to_rgb(torch.stack((h, hsv[:, 1], hsv[:, 2]), dim=1)).clamp_(0, 1)


JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)  # ColorJitter's fn ids 0..3


def solarize(x: torch.Tensor) -> torch.Tensor:
    """x >= 128/255 -> 1 - x; the threshold sits half a level lower because values are not rounded to 8 bits."""
    return torch.where(x >= (SOLARIZE_THRESHOLD - 0.5) / 255.0, 1.0 - x, x)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std normalisation of [0, 1] images."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _apply_subset(x: torch.Tensor, rows: torch.Tensor, op: Any, *args: torch.Tensor) -> torch.Tensor:
    # rows: CPU bool mask; index on the device with it (the parameters stay on CPU, so no device sync here).
    idx = rows.nonzero().flatten()
    if len(idx) == 0:
        return x
    if len(idx) == x.shape[0]:
        return op(x, *args)
    dev_idx = idx.to(x.device, non_blocking=True)
    x = x.clone()
    x[dev_idx] = op(x[dev_idx], *(a[idx] for a in args))
    return x


def photometric(pixels: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) views on any device + (N, PHOTO_SIZE) CPU parameters -> normalised float32 views."""
    if photo.ndim != 2 or photo.shape != (pixels.shape[0], PHOTO_SIZE):
        raise ValueError(f"expected ({pixels.shape[0]}, {PHOTO_SIZE}) photometric parameters, got {tuple(photo.shape)}")
    photo = photo.cpu()
    x = pixels.float().div_(255.0)
    jitter = photo[:, JITTER] > 0
    order = photo[:, ORDER : ORDER + 4].long()
    for pos in range(4):
        for fn_id, op in enumerate(JITTER_OPS):
            x = _apply_subset(x, jitter & (order[:, pos] == fn_id), op, photo[:, FACTORS[fn_id]])
    gray = photo[:, GRAY] > 0
    x = _apply_subset(x, gray, lambda t: grayscale(t).expand_as(t).contiguous())
    blur = photo[:, BLUR] > 0
    if blur.any():
        k = blur_kernel_size(float(photo[blur, SIGMA].max()))
        x = _apply_subset(x, blur, lambda t, s: gaussian_blur(t, s, k), photo[:, SIGMA])
    x = _apply_subset(x, photo[:, SOLARIZE] > 0, solarize)
    return normalize(x)


def finish_views(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Move a collated batch's uint8 views to `device` and apply their photometric ops; other entries unchanged.

    A batch of the cpu pipeline (no `<key>_photo` entries) comes back as it was.
    """
    out = dict(batch)
    for key in [k for k in batch if k.endswith(PHOTO_SUFFIX)]:
        view = key[: -len(PHOTO_SUFFIX)]
        pixels = out[view].to(device, non_blocking=True)
        out[view] = photometric(pixels, out.pop(key))
    return out


def resolve_pipeline(pipeline: str, device: torch.device | str) -> str:
    """'auto' -> 'device' when training on a GPU, 'cpu' otherwise (see the README's performance section)."""
    if pipeline == "auto":
        return "device" if torch.device(device).type == "cuda" else "cpu"
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline must be auto, {' or '.join(PIPELINES)}, got {pipeline!r}")
    return pipeline
