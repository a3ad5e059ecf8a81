"""Batched photometric ops of the device pipeline: orl's own torch ops against kornia.augmentation, per view recipe.

Both get the same float batch in [0, 1] (--batch views at --image-size, smooth random content) and apply one view
recipe of BYOL: colour jitter with p 0.8, grayscale 0.2, Gaussian blur (view 1: p 1.0, view 2: 0.1), solarize
(view 2: 0.2), then ImageNet normalisation. orl's ops take the parameters drawn beforehand (as the workers ship them);
kornia draws its own. Prints one JSON line per (library, view) with ms_per_image (best of --repeats), then the
ratio. Faithfulness matters as much as speed here: kornia's ColorJitter draws one order of the four factors per
batch, torchvision's (the reference pipeline's) one per image, so kornia cannot reproduce the `cpu` pipeline's views.
Without kornia, only orl's ops are timed, and a line says so.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speed/photometric_ops.py --batch 32
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Callable

import torch

from orl.data.augment import BYOL_VIEWS, IMAGENET_MEAN, IMAGENET_STD, ViewRecipe, blur_kernel_size
from orl.data.device_augment import draw_photometric, photometric


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so wall times measure it; a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_ms_per_image(fn: Callable[[], Any], n: int, device: torch.device, repeats: int) -> float:
    """Best-of-`repeats` wall ms of fn() divided by the n images it processes (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        sync_device(device)
        t0 = time.perf_counter()
        fn()
        sync_device(device)
        best = min(best, time.perf_counter() - t0)
    return 1000 * best / n


def kornia_view(recipe: ViewRecipe) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """kornia's version of one view's photometric recipe, or None without kornia."""
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    b, c, s, h = recipe.jitter
    steps = [K.ColorJitter(b, c, s, h, p=recipe.jitter_p), K.RandomGrayscale(p=recipe.grayscale_p)]
    if recipe.blur_p > 0:
        k = blur_kernel_size(recipe.blur_sigma[1])
        steps.append(K.RandomGaussianBlur((k, k), recipe.blur_sigma, p=recipe.blur_p))
    if recipe.solarize_p > 0:
        steps.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=recipe.solarize_p))
    steps.append(K.Normalize(torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)))
    return K.AugmentationSequential(*steps)


def measure(batch: int, size: int, device: torch.device, repeats: int) -> list[dict[str, Any]]:
    """ms per image of each library on each BYOL view recipe."""
    g = torch.Generator().manual_seed(0)
    small = torch.rand(batch, 3, 8, 8, generator=g)
    x = torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear", align_corners=False).to(device)
    rows = []
    for view, recipe in enumerate(BYOL_VIEWS, start=1):
        torch.manual_seed(view)
        photo = torch.stack([draw_photometric(recipe) for _ in range(batch)])
        fns = {"orl": lambda: photometric(x.clone(), photo)}
        kornia = kornia_view(recipe)
        if kornia is not None:
            kornia = kornia.to(device)
            fns["kornia"] = lambda k=kornia: k(x)
        for library, fn in fns.items():
            rows.append({"library": library, "view": view, "ms_per_image": round(best_ms_per_image(fn, batch, device,
                         repeats), 3), "batch": batch, "image_size": size, "device": str(device)})
    return rows


def main() -> None:
    """Time both libraries and print the JSON lines and the ratios."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = measure(args.batch, args.image_size, torch.device(args.device), args.repeats)
    for r in rows:
        print(json.dumps(r))
    by = {(r["library"], r["view"]): r["ms_per_image"] for r in rows}
    if ("kornia", 1) not in by:
        print("kornia is not importable: only orl's ops were timed")
        return
    for view in (1, 2):
        print(f"view {view}: kornia / orl time = {by['kornia', view] / by['orl', view]:.2f}")


if __name__ == "__main__":
    main()
