"""Attention maps of pretrained backbones on scene images, methods side by side (ORL supplementary Figure 2).

The map of one image is the mean over channels of the ONLINE backbone's res5 activations, upsampled bilinearly to
the (resized) image and normalised to [0, 1] per image, drawn as a heatmap over the image. Rows are images, the
first column the image itself, then one column per model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from orl.data.augment import IMAGENET_MEAN, IMAGENET_STD
from orl.data.images import IMAGE_SUFFIXES, open_rgb

HEADER_PX = 24  # height of the band of column titles above the grid
INDEX_SUFFIXES = (".h5", ".hdf5")


def parse_models(specs: Sequence[str]) -> dict[str, Path]:
    """NAME=PATH words -> {name: path}, in the given order; names must be unique and non-empty."""
    models: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise ValueError(f"--models entries are NAME=PATH (e.g. byol=results/pretrain/byol/model.pt), got {spec!r}")
        if name in models:
            raise ValueError(f"model name {name!r} given twice")
        models[name] = Path(path)
    if not models:
        raise ValueError("give at least one model as NAME=PATH")
    return models


def select_images(source: str | os.PathLike, num: int) -> list[Path]:
    """The first `num` images of a folder (sorted relative paths, as the index orders a folder) or of an index.h5."""
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    source = Path(source)
    if source.is_dir():
        found = sorted(
            (p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
             and not p.name.startswith(".")),
            key=lambda p: p.relative_to(source).as_posix(),
        )
        if not found:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {source}")
        return found[:num]
    if source.is_file() and source.suffix.lower() in INDEX_SUFFIXES:
        from orl.data.image_index import load_index  # lazy: pulls in h5py

        index = load_index(source)
        return [index.path(i) for i in range(min(num, len(index)))]
    if not source.exists():
        raise FileNotFoundError(f"image source {source} does not exist (give a folder of images or an index .h5)")
    raise ValueError(f"{source}: not a folder of images or an image index (.h5)")


def load_images(paths: Sequence[str | os.PathLike], size: int) -> tuple[np.ndarray, torch.Tensor]:
    """Images resized to size x size: (N, size, size, 3) uint8 for display and the ImageNet-normalised batch."""
    if size < 32:
        raise ValueError(f"size must be >= 32 (one res5 cell is 32 px), got {size}")
    if not paths:
        raise ValueError("no images to draw")
    # Squash to a square, as the authors' VOC07 SVM input: the whole scene stays in the panel (no crop).
    shown = np.stack([np.asarray(open_rgb(p).resize((size, size), Image.BILINEAR)) for p in paths])
    x = torch.from_numpy(shown).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return shown, (x - mean) / std


def load_model(path: str | os.PathLike) -> nn.Module:
    """The ONLINE ResNet trunk (res5 map) of model.pt, or of a torchvision backbone.pth (arch from its keys); eval."""
    from orl.bench.weights import load_backbone  # model.pt via load_pretrained, state dicts via infer_arch

    model, _arch = load_backbone(path)
    return model.eval()


@torch.inference_mode()
def attention_maps(backbone: nn.Module, x: torch.Tensor, batch_size: int = 16) -> np.ndarray:
    """(N, H, W) float32 maps in [0, 1]: channel-mean of res5, bilinearly upsampled to H x W, min-max per image."""
    device = next(backbone.parameters()).device
    maps = []
    for s in range(0, len(x), batch_size):
        feats = backbone(x[s : s + batch_size].to(device)).float()
        m = feats.mean(dim=1, keepdim=True)
        m = F.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        # Normalise after upsampling so each map spans exactly [0, 1] at the image's resolution.
        lo = m.amin(dim=(1, 2), keepdim=True)
        span = m.amax(dim=(1, 2), keepdim=True) - lo
        # A constant map (e.g. all-zero res5) has no structure to show: draw it as 0, not 0 / 0.
        maps.append(torch.where(span > 0, (m - lo) / span.clamp_min(1e-12), torch.zeros_like(m)).cpu())
    return torch.cat(maps).numpy().astype(np.float32)


def overlay(image: np.ndarray, amap: np.ndarray, cmap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """Blend the colour-mapped [0, 1] map over an (H, W, 3) uint8 image; returns uint8 of the same shape."""
    import matplotlib

    if image.shape[:2] != amap.shape:
        raise ValueError(f"map of shape {amap.shape} does not match the image {image.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    heat = matplotlib.colormaps[cmap](np.clip(amap, 0.0, 1.0))[..., :3]
    blended = (1.0 - alpha) * image.astype(np.float64) / 255.0 + alpha * heat
    return np.clip(blended * 255.0 + 0.5, 0, 255).astype(np.uint8)


def draw_attention_grid(
    images: np.ndarray,
    maps: Mapping[str, np.ndarray],
    out: str | os.PathLike,
    labels: Sequence[str] | None = None,
    panel: int = 160,
    cmap: str = "jet",
    alpha: float = 0.5,
    dpi: int = 100,
) -> Path:
    """Write the PNG grid: rows = images, columns = image + one overlay per model; size
    ((1 + len(maps)) * panel) x (HEADER_PX + len(images) * panel) pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(images)
    for name, m in maps.items():
        if len(m) != n:
            raise ValueError(f"{name}: {len(m)} maps for {n} images")
    cols = 1 + len(maps)
    width, height = cols * panel, HEADER_PX + n * panel
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)  # Agg: no display needed
    margin = 2  # pixels around each panel, so neighbouring panels stay apart
    side = panel - 2 * margin
    titles = ["image", *maps.keys()]
    for c, title in enumerate(titles):
        fig.text((c + 0.5) * panel / width, 1 - HEADER_PX / 2 / height, title, ha="center", va="center", fontsize=10)
    for r in range(n):
        bottom = height - HEADER_PX - (r + 1) * panel + margin
        for c in range(cols):
            ax = fig.add_axes(((c * panel + margin) / width, bottom / height, side / width, side / height))
            shown = images[r] if c == 0 else overlay(images[r], maps[titles[c]][r], cmap, alpha)
            ax.imshow(shown, interpolation="bilinear")
            ax.set_axis_off()
            if c == 0 and labels is not None:
                ax.text(2, 2, labels[r], fontsize=6, color="white", va="top",
                        bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format="png", facecolor="white")
    return out


def plot_attention(
    models: Mapping[str, str | os.PathLike],
    out: str | os.PathLike,
    images: str | os.PathLike | None = None,
    paths: Sequence[str | os.PathLike] | None = None,
    num: int = 6,
    size: int = 160,
    panel: int | None = None,
    cmap: str = "jet",
    alpha: float = 0.5,
    device: str = "cpu",
    batch_size: int = 16,
) -> Path:
    """Attention grid of each model on all of `paths`, or on the first `num` images of the folder / index `images`."""
    import matplotlib

    if not models:
        raise ValueError("give at least one model")
    if cmap not in matplotlib.colormaps:
        raise ValueError(f"unknown colormap {cmap!r} (e.g. jet, inferno, viridis)")
    if paths:
        chosen = [Path(p) for p in paths]  # an explicit list is drawn whole, in its order
    elif images is not None:
        chosen = select_images(images, num)
    else:
        raise ValueError("give a folder / index of images or a list of image paths")
    shown, x = load_images(chosen, size)
    maps: dict[str, np.ndarray] = {}
    for name, path in models.items():
        # One model in memory at a time: several ResNet-50s would not all need to be resident.
        backbone = load_model(path).to(device)
        maps[name] = attention_maps(backbone, x, batch_size)
        del backbone
    return draw_attention_grid(
        shown, maps, out, labels=[p.name for p in chosen], panel=panel or size, cmap=cmap, alpha=alpha
    )
