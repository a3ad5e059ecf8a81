"""Image augmentations: BYOL's two asymmetric views (ORL_SPEC section 1), the RoI patch recipe, and the eval transform.

Everything runs on CPU DataLoader workers with torchvision.transforms.v2, in the order of the spec. Crop, flip,
colour jitter and grayscale run on the PIL image (PIL's 8-bit colour ops are about 2x faster than the tensor ones
and are what OpenSelfSup used); blur and solarize run on a uint8 tensor. The blur is separable (two 1-d passes):
torchvision's GaussianBlur convolves with the full k x k kernel, 10x slower at k = 23. All randomness comes from
the global torch RNG, which the datasets seed per sample (orl.data.datasets) so that views are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (blur probability, solarize probability) of view 1 and view 2: the asymmetric BYOL recipe.
VIEW_PROBS: dict[int, tuple[float, float]] = {1: (1.0, 0.0), 2: (0.1, 0.2)}
BLUR_SIGMA = (0.1, 2.0)
SOLARIZE_THRESHOLD = 128

Transform = Callable[[Any], torch.Tensor]


def blur_kernel_size(size: int) -> int:
    """Odd Gaussian kernel of about 10% of the image side (23 at 224 px, as BYOL), at least 3."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


def gaussian_kernel1d(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Normalised 1-d Gaussian kernels, one row per sigma: (N,) -> (N, kernel_size), float32."""
    half = kernel_size // 2
    x = torch.arange(-half, half + 1, dtype=torch.float32, device=sigma.device)
    k = torch.exp(-0.5 * (x[None, :] / sigma.float()[:, None]) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding of (C, H, W) or (N, C, H, W) images, one sigma per image.

    Same result as torchvision's gaussian_blur (up to float rounding); uint8 in -> uint8 out (rounded).
    """
    single = images.ndim == 3
    x = images[None] if single else images
    n, c, h, w = x.shape
    sigma = sigma.reshape(-1).expand(n) if sigma.numel() == 1 else sigma.reshape(n)
    out_dtype = x.dtype
    y = x.float().reshape(1, n * c, h, w)
    k = gaussian_kernel1d(sigma.to(y.device), kernel_size).repeat_interleave(c, dim=0)  # (n*c, k)
    pad = kernel_size // 2
    # Two 1-d passes (k + k multiply-adds per pixel instead of k * k); grouped conv = one kernel per (image, channel).
    y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode="reflect"), k[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), k[:, None, :, None], groups=n * c)
    y = y.reshape(n, c, h, w)
    if not out_dtype.is_floating_point:
        y = y.round_().clamp_(0, 255).to(out_dtype)
    return y[0] if single else y


class RandomGaussianBlur:
    """With probability p, blur a (C, H, W) tensor with sigma ~ U(sigma_min, sigma_max) and a fixed odd kernel."""

    def __init__(self, kernel_size: int, sigma: tuple[float, float] = BLUR_SIGMA, p: float = 1.0) -> None:
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.kernel_size, self.sigma, self.p = kernel_size, sigma, p

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        # Draw both numbers every call so the RNG stream does not depend on the outcome of the coin.
        coin, u = torch.rand(2).tolist()
        if coin >= self.p:
            return img
        sigma = self.sigma[0] + (self.sigma[1] - self.sigma[0]) * u
        return gaussian_blur(img, torch.tensor([sigma]), self.kernel_size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kernel_size={self.kernel_size}, sigma={self.sigma}, p={self.p})"


def _view_probs(view: int) -> tuple[float, float]:
    if view not in VIEW_PROBS:
        raise ValueError(f"view must be 1 or 2, got {view!r}")
    return VIEW_PROBS[view]


def photometric_steps(view: int, size: int) -> list[Callable[[Any], Any]]:
    """Flip, colour jitter, grayscale (on PIL), then blur and solarize (on uint8 tensor) of view 1 or 2."""
    p_blur, p_solarize = _view_probs(view)
    steps: list[Callable[[Any], Any]] = [
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.PILToTensor(),
    ]
    if p_blur > 0:
        steps.append(RandomGaussianBlur(blur_kernel_size(size), BLUR_SIGMA, p=p_blur))
    if p_solarize > 0:
        # x >= 128 -> 255 - x on the 8-bit values, as PIL.ImageOps.solarize.
        steps.append(v2.RandomSolarize(threshold=SOLARIZE_THRESHOLD, p=p_solarize))
    return steps


def normalize_steps() -> list[v2.Transform]:
    """uint8 [0, 255] -> float32 [0, 1] -> ImageNet mean/std."""
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def view_transform(view: int, size: int = 224, scale: tuple[float, float] = (0.08, 1.0)) -> Transform:
    """One BYOL view (1 or 2): PIL RGB image -> normalised (3, size, size) float tensor."""
    return v2.Compose(
        [
            # Crop + resize first so every later step touches size^2 pixels only.
            v2.RandomResizedCrop(
                size, scale=scale, ratio=(3 / 4, 4 / 3), interpolation=v2.InterpolationMode.BILINEAR, antialias=True
            ),
            *photometric_steps(view, size),
            *normalize_steps(),
        ]
    )


def two_view_transforms(size: int = 224) -> tuple[Transform, Transform]:
    """The asymmetric pair (view 1, view 2) of BYOL / ORL's global views."""
    return view_transform(1, size), view_transform(2, size)


def _to_pil(img: Any) -> Image.Image:
    # Module level (not a closure) so the transform pickles for spawn/forkserver DataLoader workers.
    if isinstance(img, Image.Image):
        return img
    if isinstance(img, torch.Tensor) and img.dtype == torch.uint8 and img.ndim == 3:
        return v2.functional.to_pil_image(img)
    raise TypeError(f"patches must be PIL images or (3, H, W) uint8 tensors, got {type(img).__name__}")


def patch_view_transform(view: int, size: int = 96) -> Transform:
    """ORL's RoI recipe: view 1 or 2 augmentations WITHOUT RandomResizedCrop, for an already cropped+resized patch.

    Input: a PIL image or a (3, size, size) uint8 tensor; output: normalised float tensor.
    """
    return v2.Compose([v2.Lambda(_to_pil), *photometric_steps(view, size), *normalize_steps()])


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
