"""Image augmentations: each method's view recipe (a ViewRecipe per view), the RoI patch recipe, the eval transform.

Everything runs on CPU DataLoader workers with torchvision.transforms.v2, in the order of the spec. Crop, flip,
colour jitter and grayscale run on the PIL image (PIL's 8-bit colour ops are about 2x faster than the tensor ones
and are what OpenSelfSup used); blur and solarize run on a uint8 tensor. The blur is separable (two 1-d passes) and
untruncated (radius 4 sigma, edge pixels repeated), i.e. PIL's GaussianBlur(radius=sigma) of the authors' pipeline
at every image size. All randomness comes from the global torch RNG, which the datasets seed per sample
(orl.data.datasets) so that views are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BLUR_SIGMA = (0.1, 2.0)
SOLARIZE_THRESHOLD = 128
# Kernel radius in sigmas: the taps left out hold 6e-5 of the Gaussian's mass, below 8-bit rounding.
BLUR_TRUNCATE = 4.0

Transform = Callable[[Any], torch.Tensor]


@dataclass(frozen=True)
class ViewRecipe:
    """The augmentation parameters of one view: crop scale, ColorJitter strengths and the step probabilities."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 1.0
    blur_sigma: tuple[float, float] = BLUR_SIGMA
    solarize_p: float = 0.0


# BYOL's asymmetric pair (ORL_SPEC section 1), also ORL's global views and RoI patches.
BYOL_VIEWS: tuple[ViewRecipe, ViewRecipe] = (ViewRecipe(blur_p=1.0, solarize_p=0.0),
                                             ViewRecipe(blur_p=0.1, solarize_p=0.2))


def blur_kernel_size(sigma: float, truncate: float = BLUR_TRUNCATE) -> int:
    """Odd kernel side that covers +-truncate sigma (17 at sigma 2), at least 3: untruncated in 8-bit output."""
    return 2 * max(1, math.ceil(truncate * sigma)) + 1


def gaussian_kernel1d(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Normalised 1-d Gaussian kernels, one row per sigma: (N,) -> (N, kernel_size), float32."""
    half = kernel_size // 2
    x = torch.arange(-half, half + 1, dtype=torch.float32, device=sigma.device)
    k = torch.exp(-0.5 * (x[None, :] / sigma.float()[:, None]) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(
    images: torch.Tensor, sigma: torch.Tensor, kernel_size: int | None = None, padding: str = "replicate"
) -> torch.Tensor:
    """Separable Gaussian blur of (C, H, W) or (N, C, H, W) images, one sigma per image; uint8 in -> uint8 out.

    kernel_size None: blur_kernel_size of the largest sigma (untruncated). padding "replicate" repeats the edge
    pixels as PIL's GaussianBlur does; "reflect" gives torchvision's gaussian_blur (up to float rounding).
    """
    single = images.ndim == 3
    x = images[None] if single else images
    n, c, h, w = x.shape
    sigma = sigma.reshape(-1).expand(n) if sigma.numel() == 1 else sigma.reshape(n)
    if kernel_size is None:
        kernel_size = blur_kernel_size(float(sigma.max()))
    out_dtype = x.dtype
    y = x.float().reshape(1, n * c, h, w)
    # (n*c, k); sigma.to is no copy for the device pipeline, whose photometric sends sigma with the other rows.
    k = gaussian_kernel1d(sigma.to(y.device), kernel_size).repeat_interleave(c, dim=0)
    pad = kernel_size // 2
    # Two 1-d passes (k + k multiply-adds per pixel instead of k * k); grouped conv = one kernel per (image, channel).
    y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode=padding), k[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode=padding), k[:, None, :, None], groups=n * c)
    y = y.reshape(n, c, h, w)
    if not out_dtype.is_floating_point:
        y = y.round_().clamp_(0, 255).to(out_dtype)
    return y[0] if single else y


class RandomGaussianBlur:
    """With probability p, blur a (C, H, W) tensor with sigma ~ U(sigma_min, sigma_max), untruncated (as PIL)."""

    def __init__(self, sigma: tuple[float, float] = BLUR_SIGMA, p: float = 1.0) -> None:
        if not 0 < sigma[0] <= sigma[1]:
            raise ValueError(f"sigma range must satisfy 0 < min <= max, got {sigma}")
        self.sigma, self.p = sigma, p

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        # Draw both numbers every call so the RNG stream does not depend on the outcome of the coin.
        coin, u = torch.rand(2).tolist()
        if coin >= self.p:
            return img
        sigma = self.sigma[0] + (self.sigma[1] - self.sigma[0]) * u
        return gaussian_blur(img, torch.tensor([sigma]))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma}, p={self.p})"


def photometric_steps(recipe: ViewRecipe) -> list[Callable[[Any], Any]]:
    """Flip, colour jitter, grayscale (on PIL), then blur and solarize (on uint8 tensor) of one view's recipe."""
    b, c, s, h = recipe.jitter
    steps: list[Callable[[Any], Any]] = [
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomApply([v2.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h)], p=recipe.jitter_p),
        v2.RandomGrayscale(p=recipe.grayscale_p),
        v2.PILToTensor(),
    ]
    if recipe.blur_p > 0:
        steps.append(RandomGaussianBlur(recipe.blur_sigma, p=recipe.blur_p))
    if recipe.solarize_p > 0:
        # x >= 128 -> 255 - x on the 8-bit values, as PIL.ImageOps.solarize.
        steps.append(v2.RandomSolarize(threshold=SOLARIZE_THRESHOLD, p=recipe.solarize_p))
    return steps


def normalize_steps() -> list[v2.Transform]:
    """uint8 [0, 255] -> float32 [0, 1] -> ImageNet mean/std."""
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def view_transform(recipe: ViewRecipe, size: int = 224) -> Transform:
    """One view of a recipe: PIL RGB image -> normalised (3, size, size) float tensor."""
    return v2.Compose(
        [
            # Crop + resize first so every later step touches size^2 pixels only.
            v2.RandomResizedCrop(
                size, scale=recipe.crop_scale, ratio=(3 / 4, 4 / 3), interpolation=v2.InterpolationMode.BILINEAR, antialias=True
            ),
            *photometric_steps(recipe),
            *normalize_steps(),
        ]
    )


def two_view_transforms(
    size: int = 224, views: tuple[ViewRecipe, ViewRecipe] = BYOL_VIEWS
) -> tuple[Transform, Transform]:
    """The (view 1, view 2) transforms of a recipe pair (default BYOL's, also ORL's global views)."""
    return view_transform(views[0], size), view_transform(views[1], size)


def _to_pil(img: Any) -> Image.Image:
    # Module level (not a closure) so the transform pickles for spawn/forkserver DataLoader workers.
    if isinstance(img, Image.Image):
        return img
    if isinstance(img, torch.Tensor) and img.dtype == torch.uint8 and img.ndim == 3:
        return v2.functional.to_pil_image(img)
    raise TypeError(f"patches must be PIL images or (3, H, W) uint8 tensors, got {type(img).__name__}")


def patch_view_transform(recipe: ViewRecipe) -> Transform:
    """ORL's RoI recipe: a view's augmentations WITHOUT RandomResizedCrop, for an already cropped+resized patch.

    Input: a PIL image or a (3, H, W) uint8 tensor; output: normalised float tensor of the same size.
    """
    return v2.Compose([v2.Lambda(_to_pil), *photometric_steps(recipe), *normalize_steps()])


def eval_transform(size: int = 224, resize: int | None = None) -> Transform:
    """Deterministic eval preprocessing: resize short side (default size * 256 / 224), centre crop, normalise."""
    resize = int(math.floor(size * 256 / 224 + 0.5)) if resize is None else resize
    return v2.Compose(
        [
            v2.Resize(resize, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
            v2.CenterCrop(size),
            v2.PILToTensor(),
            *normalize_steps(),
        ]
    )


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation (for figures and tests): float tensor, about [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return x * std + mean
