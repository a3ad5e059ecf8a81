"""The `device` input pipeline: workers decode and draw, the training device crops, resizes and augments in batches.

Worker side (`DeviceViewTransform`, `DevicePatchTransform`): the sample's images go out whole, as uint8 (3, H, W)
(or as JPEG bytes, orl.data.device_decode), under the "images" key; each view gets a geometry row (which image,
the crop box, the flip, the output side) and a photometric row. Both are drawn from the per-sample torch RNG in
exactly the order and number the cpu pipeline's transforms consume it (RandomResizedCrop's make_params, the flip
coin, the RandomApply coin, ColorJitter's randperm and four factors, grayscale coin, blur coin + sigma, solarize
coin), so for the same (seed, epoch, image) both pipelines use the same crops and parameters, and resume stays
exact. The worker thus only decodes (or just reads) the files: no resize, no pixel work.

Device side (`finish_views`): each view is cropped from its image (zero padding outside it, as PIL's crop),
resized with antialiased bilinear interpolation (torch's PIL-like filter) and flipped, then colour jitter in each
sample's own order of the four factors, grayscale, separable Gaussian blur (replicate padding, untruncated, as
PIL), solarize and ImageNet normalisation; float32 in [0, 1] throughout (no 8-bit rounding between ops). Plain
torch ops: the same code runs on CPU tensors (tested) and on CUDA. No host-device sync: every decision (which rows
a step touches, the blur kernel size) is made on the CPU copy of the parameter rows, each view key's rows and row
indices reach the device in one pinned, non-blocking copy, and the constants are made once per device. On CUDA the
blur runs on every row with one kernel size (unblurred rows are kept by a select), so its grouped convolution has
the same shape in every batch and cudnn.benchmark (orl.runtime) never re-tunes it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import default_collate
from torchvision.transforms import v2

from orl.data.augment import (BLUR_SIGMA, IMAGENET_MEAN, IMAGENET_STD, SOLARIZE_THRESHOLD, ViewRecipe,
                              blur_kernel_size, gaussian_blur)
from orl.data.device_decode import decode_on_device, is_encoded

PIPELINES = ("cpu", "device")
PHOTO_SUFFIX = "_photo"
GEO_SUFFIX = "_geo"
IMAGES_KEY = "images"  # per sample: its images, uint8 (3, H, W) or JPEG bytes (orl.data.device_decode)
PATHS_KEY = "image_paths"  # per sample: the files of those images, to name a file that fails to decode
RAGGED_KEYS = (IMAGES_KEY, PATHS_KEY)

# Layout of one geometry row (int64).
SOURCE, LEFT, TOP, WIDTH, HEIGHT, FLIP, SIDE = range(7)
GEO_SIZE = 7

# Layout of one parameter row (float32). Neutral values where a step is off: the op is then the identity.
JITTER, ORDER, BRIGHTNESS, CONTRAST, SATURATION, HUE, GRAY, BLUR, SIGMA, SOLARIZE = 0, 1, 5, 6, 7, 8, 9, 10, 11, 12
PHOTO_SIZE = 13
FACTORS = (BRIGHTNESS, CONTRAST, SATURATION, HUE)  # ColorJitter's fn ids 0..3 in this order
NEUTRAL = (1.0, 1.0, 1.0, 0.0)
# Gray level of torchvision's rgb_to_grayscale (ITU-R 601-2 luma, as PIL's "L" conversion).
LUMA = (0.2989, 0.587, 0.114)
# hsv_to_rgb: hue sector i -> indices of (r, g, b) among (v, q, p, t), the standard table.
HSV_SECTORS = ((0, 3, 2), (1, 0, 2), (2, 0, 3), (2, 1, 0), (3, 2, 0), (0, 2, 1))


class RawView(NamedTuple):
    """A worker's output for one view: its geometry row (GEO_SIZE int64) and its photometric row (PHOTO_SIZE)."""

    geo: torch.Tensor
    photo: torch.Tensor


def geometry_row(source: int, box: tuple[int, int, int, int], flip: bool, size: int) -> torch.Tensor:
    """One view's geometry: image `source` of the sample, crop box (x, y, w, h), flip, output side."""
    return torch.tensor([source, *box, int(flip), size], dtype=torch.int64)


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


def _draw_flip() -> bool:
    # v2.RandomHorizontalFlip(p=0.5) flips unless torch.rand(1) >= 0.5.
    return bool(torch.rand(1) < 0.5)


class DeviceViewTransform:
    """Worker half of one view: draws RandomResizedCrop's box, the flip and the photometric parameters."""

    def __init__(self, recipe: ViewRecipe, size: int = 224) -> None:
        self.recipe, self.size = recipe, size
        # The cpu pipeline's own transform (orl.data.augment.view_transform), used only for its box draw.
        self.crop = v2.RandomResizedCrop(size, scale=recipe.crop_scale, ratio=(3 / 4, 4 / 3),
                                         interpolation=v2.InterpolationMode.BILINEAR, antialias=True)

    def __call__(self, img: Image.Image, source: int = 0) -> RawView:
        """`img` gives only the size: a decoded image or one opened lazily (header read)."""
        box = self.crop.make_params([img])
        geo = geometry_row(source, (box["left"], box["top"], box["width"], box["height"]), _draw_flip(), self.size)
        return RawView(geo, draw_photometric(self.recipe))


class DevicePatchTransform:
    """Worker half of an ORL RoI patch: the box (drawn by the dataset) resized to `size`, the flip, the parameters."""

    def __init__(self, recipe: ViewRecipe, size: int) -> None:
        self.recipe, self.size = recipe, size

    def __call__(self, box: Any, source: int = 0) -> RawView:
        """box: (x, y, w, h) in image `source` of the sample."""
        x, y, w, h = (int(v) for v in box)
        return RawView(geometry_row(source, (x, y, w, h), _draw_flip(), self.size), draw_photometric(self.recipe))


def view_entries(key: str, view: torch.Tensor | RawView) -> dict[str, torch.Tensor]:
    """The sample-dict entries of one view: {key: tensor} (cpu pipeline) or {key_geo: row, key_photo: row}."""
    if isinstance(view, RawView):
        return {key + GEO_SUFFIX: view.geo, key + PHOTO_SUFFIX: view.photo}
    return {key: view}


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """default_collate, except the device pipeline's images (any size) and their paths stay per-sample lists."""
    ragged = [k for k in RAGGED_KEYS if k in samples[0]]
    out = default_collate([{k: v for k, v in s.items() if k not in ragged} for s in samples])
    for k in ragged:
        out[k] = [s[k] for s in samples]
    return out


# ----------------------------------------------------------------------------------------- host -> device, once
def to_device_once(parts: Sequence[torch.Tensor], device: torch.device | str) -> list[torch.Tensor]:
    """CPU tensors (float32, int64 below 2**24, bool) on `device` in one copy: pinned and non-blocking on CUDA."""
    device = torch.device(device)
    flat = torch.cat([p.reshape(-1).float() for p in parts])
    if device.type == "cuda":
        flat = flat.pin_memory()  # a pageable source would make the "non-blocking" copy wait for the stream
    flat = flat.to(device, non_blocking=True)
    return [f.view(p.shape).to(p.dtype) for f, p in zip(flat.split([p.numel() for p in parts]), parts)]


@functools.lru_cache(maxsize=None)
def _constant(values: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return to_device_once([torch.tensor(values, dtype=dtype)], device)[0]


def device_constant(values: tuple, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """A small constant tensor on `device`, made once per (values, device, dtype)."""
    return _constant(values, torch.device(device), dtype)


# ------------------------------------------------------------------------------------------ batched ops, [0, 1]
def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)  # no copy: photometric passes device rows


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) float -> (N, 1, H, W) luma."""
    w = device_constant(LUMA, x.device, x.dtype).view(1, 3, 1, 1)
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
    table = device_constant(HSV_SECTORS, x.device, torch.int64)  # sector -> (r, g, b) from (v, q, p, t)
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
    mean = device_constant(IMAGENET_MEAN, x.device, x.dtype).view(1, 3, 1, 1)
    std = device_constant(IMAGENET_STD, x.device, x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _apply_rows(x: torch.Tensor, rows: torch.Tensor | None, op: Any, *args: torch.Tensor) -> torch.Tensor:
    # rows: None (all rows) or a device index of some rows; args: one device value per row of x.
    if rows is None:
        return op(x, *args)
    x = x.clone()
    x[rows] = op(x[rows], *(a[rows] for a in args))
    return x


def photometric(pixels: torch.Tensor, photo: torch.Tensor, fixed_shapes: bool | None = None) -> torch.Tensor:
    """(N, 3, H, W) views (uint8, or float in [0, 1]) on any device + (N, PHOTO_SIZE) CPU parameters -> normalised.

    fixed_shapes (default: on CUDA): blur every row with one kernel size and keep the unblurred rows by a select, so
    the blur's convolution has one shape per batch size; otherwise blur only the rows that draw it.
    """
    if photo.ndim != 2 or photo.shape != (pixels.shape[0], PHOTO_SIZE):
        raise ValueError(f"expected ({pixels.shape[0]}, {PHOTO_SIZE}) photometric parameters, got {tuple(photo.shape)}")
    photo = photo.cpu()
    x = pixels.float().div_(255.0) if pixels.dtype == torch.uint8 else pixels
    n = x.shape[0]
    fixed = x.device.type == "cuda" if fixed_shapes is None else fixed_shapes
    # Every decision on the CPU rows: the steps in the order they run, each with its rows and its per-row arguments
    # (a parameter column, or "sigma" / "blur" below).
    jitter, order, blur = photo[:, JITTER] > 0, photo[:, ORDER : ORDER + 4].long(), photo[:, BLUR] > 0
    steps: list[tuple[torch.Tensor, Any, tuple[int | str, ...]]] = [
        (jitter & (order[:, pos] == fn_id), op, (FACTORS[fn_id],))
        for pos in range(4) for fn_id, op in enumerate(JITTER_OPS)
    ]
    steps.append((photo[:, GRAY] > 0, lambda t: grayscale(t).expand_as(t).contiguous(), ()))
    if blur.any():
        # One kernel size for the recipes' whole sigma range (17 taps): untruncated for every row, and one shape.
        k = blur_kernel_size(max(BLUR_SIGMA[1], float(photo[blur, SIGMA].max())))
        if fixed:
            steps.append((torch.ones(n, dtype=torch.bool),
                          lambda t, s, b: torch.where(b.view(-1, 1, 1, 1), gaussian_blur(t, s, k), t),
                          ("sigma", "blur")))
        else:
            steps.append((blur, lambda t, s: gaussian_blur(t, s, k), ("sigma",)))
    steps.append((photo[:, SOLARIZE] > 0, solarize, ()))
    indices = [mask.nonzero().flatten() for mask, _, _ in steps]
    partial = [idx for idx in indices if 0 < len(idx) < n]
    sigma = torch.where(blur, photo[:, SIGMA], torch.ones(n))  # unblurred rows: any valid sigma, result unused
    dev_photo, dev_sigma, dev_blur, *dev_partial = to_device_once([photo, sigma, blur, *partial], x.device)
    named = {"sigma": dev_sigma, "blur": dev_blur}
    sent = iter(dev_partial)
    for (_, op, args), idx in zip(steps, indices):
        if len(idx):
            rows = None if len(idx) == n else next(sent)
            x = _apply_rows(x, rows, op, *(named[a] if isinstance(a, str) else dev_photo[:, a] for a in args))
    return normalize(x)


def padded_crop(image: torch.Tensor, x: int, y: int, w: int, h: int) -> torch.Tensor:
    """(C, h, w) crop at (x, y) of a (C, H, W) image, zeros where the box leaves the image (as PIL's crop)."""
    _, height, width = image.shape
    if x >= 0 and y >= 0 and x + w <= width and y + h <= height:
        return image[:, y : y + h, x : x + w]
    out = image.new_zeros((image.shape[0], h, w))
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x1 > x0 and y1 > y0:
        out[:, y0 - y : y1 - y, x0 - x : x1 - x] = image[:, y0:y1, x0:x1]
    return out


def crop_resize_flip(images: list[list[torch.Tensor]], geo: torch.Tensor) -> torch.Tensor:
    """The views of a batch from their samples' uint8 images and (N, GEO_SIZE) geometry rows -> float (N, 3, S, S).

    Antialiased bilinear resize (torch's PIL-like filter, half-pixel centres) of each crop, one sample at a time:
    crops differ in size; the flipped ones are flipped as they come. Then one concatenation, so a view costs two or
    three kernel launches on a GPU and no host-device transfer. Values stay float in [0, 1], unrounded.
    """
    rows = geo.cpu().tolist()
    if geo.ndim != 2 or geo.shape[1] != GEO_SIZE or len(rows) != len(images):
        raise ValueError(f"expected ({len(images)}, {GEO_SIZE}) geometry rows, got {tuple(geo.shape)}")
    sides = {r[SIDE] for r in rows}
    if len(sides) != 1:
        raise ValueError(f"the views of one key must share their side, got {sorted(sides)}")
    side = sides.pop()
    views = []
    for n, (source, x, y, w, h, flip, _) in enumerate(rows):
        view = F.interpolate(padded_crop(images[n][source], x, y, w, h).float()[None], size=(side, side),
                             mode="bilinear", align_corners=False, antialias=True)
        views.append(view.flip(-1) if flip else view)  # flipped here: no row index to send to the device
    return torch.cat(views).div_(255.0).clamp_(0, 1)


def device_images(batch: Mapping[str, Any], device: torch.device | str) -> list[list[torch.Tensor]]:
    """The batch's images as uint8 (3, H, W) on `device`: decoded ones moved there, JPEG bytes decoded there."""
    per_sample = batch[IMAGES_KEY]
    paths = batch.get(PATHS_KEY) or [[""] * len(imgs) for imgs in per_sample]
    flat = [t for imgs in per_sample for t in imgs]
    flat_paths = [p for ps in paths for p in ps]
    encoded = [i for i, t in enumerate(flat) if is_encoded(t)]
    decoded = decode_on_device([flat[i] for i in encoded], [flat_paths[i] for i in encoded], device)
    for i, t in zip(encoded, decoded):
        flat[i] = t
    flat = [t.to(device, non_blocking=True) for t in flat]
    out, start = [], 0
    for imgs in per_sample:
        out.append(flat[start : start + len(imgs)])
        start += len(imgs)
    return out


def finish_views(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Build a collated device-pipeline batch's views on `device`: crop, resize, flip, photometric ops.

    The images, their paths and the parameter rows are consumed; other entries are unchanged. A batch of the cpu
    pipeline (no images) comes back as it was.
    """
    out = dict(batch)
    if IMAGES_KEY not in batch:
        return out
    images = device_images(batch, device)
    for key in [k for k in batch if k.endswith(GEO_SUFFIX)]:
        view = key[: -len(GEO_SUFFIX)]
        out[view] = photometric(crop_resize_flip(images, out.pop(key)), out.pop(view + PHOTO_SUFFIX))
    for key in RAGGED_KEYS:
        out.pop(key, None)
    return out


def resolve_pipeline(pipeline: str, device: torch.device | str) -> str:
    """'auto' -> 'device' when training on a GPU, 'cpu' otherwise (docs/performance.md, Input pipelines)."""
    if pipeline == "auto":
        return "device" if torch.device(device).type == "cuda" else "cpu"
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline must be auto, {' or '.join(PIPELINES)}, got {pipeline!r}")
    return pipeline
