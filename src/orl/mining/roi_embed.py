"""RoI embeddings for correspondence mining (ORL_SPEC §2d): the kept boxes of every image, embedded ONCE.

Two modes:
- "crop" (the authors'): crop each kept box from the original image, resize to crop_size^2 (PIL bilinear, as
  torchvision's Resize on a PIL crop), ImageNet-normalise, stage-1 online backbone, global average pool,
  L2-normalise; eval mode.
- "roi_align" (fast alternative, not the paper's): one backbone pass per image resized so its short side is
  image_size, then torchvision roi_align of the kept boxes on the res5 map, average pool, L2-normalise.

Every crop forward has the same batch shape (the last batch is zero-padded): per-sample results then do not depend
on which other crops share the batch, so the embeddings (and the pairs mined from them) are the same whatever the
sharding, and the same as the authors' per-query re-embedding (orl.mining.naive_mining).
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from orl.artifacts import Artifact
from orl.data.augment import IMAGENET_MEAN, IMAGENET_STD
from orl.data.images import open_rgb
from orl.mining.box_filter import filter_mask
from orl.models.backbones import global_pool
from orl.precision import AUTOCAST_DTYPES, autocast_dtype, ieee_fp32

MODES = ("crop", "roi_align")
# Storage dtypes of the embeddings; float16 halves the parts (COCO: ~118k x 55 x 2048 values) at ~1e-3 precision.
STORE_DTYPES: dict[str, Any] = {"float16": np.float16, "float32": np.float32}
PRECISIONS: dict[str, torch.dtype | None] = AUTOCAST_DTYPES
FALLBACK_FIRST = "first_box"  # nothing passed the filter: the first raw box (authors' rule)
FALLBACK_WHOLE = "whole_image"  # no raw box at all (failed proposals): the whole image, so stage 3 always has one


@dataclass(frozen=True)
class FilterSettings:
    """The §2d box filter parameters (paper values by default)."""

    min_size: float = 96
    max_aspect: float = 3.0
    iou: float = 0.5
    max_boxes: int = 100

    def params(self) -> dict[str, Any]:
        """As recorded in the artifacts."""
        return {"min_size": self.min_size, "max_aspect": self.max_aspect, "iou": self.iou, "max_boxes": self.max_boxes}


@dataclass(frozen=True)
class RoiSettings:
    """How kept boxes become embeddings."""

    mode: str = "crop"
    crop_size: int = 224  # crop mode: side of the resized crop (paper 224)
    image_size: int = 640  # roi_align mode: short side of the resized image
    max_long_side: int = 4000  # roi_align mode: cap on the resized long side (a 20 x 20000 image would need 5 GB)
    output_size: int = 7  # roi_align mode: pooled grid per box before the average
    dtype: str = "float16"  # storage dtype of the embeddings
    precision: str = "fp32"  # autocast dtype on GPU (CPU always runs in the model's dtype)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown RoI embedding mode {self.mode!r}; choose from {MODES}")
        if self.dtype not in STORE_DTYPES:
            raise ValueError(f"unknown embedding dtype {self.dtype!r}; choose from {sorted(STORE_DTYPES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose from {sorted(PRECISIONS)}")
        if min(self.crop_size, self.image_size, self.output_size) < 1:
            raise ValueError("crop_size, image_size and output_size must be positive")

    def params(self) -> dict[str, Any]:
        """The settings that determine the numbers (only those the mode uses)."""
        p: dict[str, Any] = {"mode": self.mode, "dtype": self.dtype, "precision": self.precision}
        if self.mode == "crop":
            p["crop_size"] = self.crop_size
        else:
            p.update(image_size=self.image_size, output_size=self.output_size, max_long_side=self.max_long_side)
        return p


def _passes(box: np.ndarray, filt: FilterSettings) -> bool:
    w, h = float(box[2]), float(box[3])
    return w >= filt.min_size and h >= filt.min_size and w > 0 and h > 0 and max(w / h, h / w) <= filt.max_aspect


def kept_boxes(raw: np.ndarray, width: int, height: int, filt: FilterSettings) -> tuple[np.ndarray, str | None]:
    """The §2d kept boxes of one image (int32 xywh, filter order) and which fallback applied, if any."""
    raw = np.asarray(raw, dtype=np.int32).reshape(-1, 4)
    if len(raw) == 0:
        return np.array([[0, 0, width, height]], dtype=np.int32), FALLBACK_WHOLE
    keep = filter_mask(raw, filt.min_size, filt.max_aspect, filt.iou, filt.max_boxes)
    kept = raw[keep]
    fallback = FALLBACK_FIRST if len(kept) == 1 and keep[0] == 0 and not _passes(kept[0], filt) else None
    return kept, fallback


def shard_kept_boxes(
    proposals: Artifact, start: int, stop: int, widths: np.ndarray, heights: np.ndarray, filt: FilterSettings,
    block: int = 4096,
) -> tuple[list[np.ndarray], list[str | None]]:
    """Kept boxes of images [start, stop), reading the raw proposals a block of images at a time (COCO: ~5 GB)."""
    offsets = proposals.dataset("boxes/offsets")[start : stop + 1]
    values = proposals.dataset("boxes/values")
    kept: list[np.ndarray] = []
    fallbacks: list[str | None] = []
    for a in range(0, stop - start, block):
        b = min(a + block, stop - start)
        raw = values[offsets[a] : offsets[b]].reshape(-1, 4)
        local = offsets[a : b + 1] - offsets[a]
        for i in range(b - a):
            pos = start + a + i
            boxes, fb = kept_boxes(raw[local[i] : local[i + 1]], int(widths[pos]), int(heights[pos]), filt)
            kept.append(boxes)
            fallbacks.append(fb)
    return kept, fallbacks


def crop_rois(img: Image.Image, boxes: np.ndarray, size: int) -> np.ndarray:
    """Each (x, y, w, h) box cropped from the full image and resized to size x size (bilinear): (B, S, S, 3) uint8."""
    out = np.empty((len(boxes), size, size, 3), dtype=np.uint8)
    for b, (x, y, w, h) in enumerate(np.asarray(boxes, dtype=np.int64)):
        out[b] = np.asarray(img.crop((x, y, x + w, y + h)).resize((size, size), Image.BILINEAR))
    return out


def resize_short_side(img: Image.Image, short: int, max_long: int | None = None) -> tuple[np.ndarray, float, float]:
    """The image resized (bilinear) so its short side is `short` (long side at most `max_long`), as (H, W, 3) uint8,
    and the x / y scale factors."""
    w, h = img.size
    s = short / min(w, h)
    if max_long is not None:
        s = min(s, max_long / max(w, h))
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    return np.array(img.resize((nw, nh), Image.BILINEAR)), nw / w, nh / h  # writable, for torch.from_numpy


def scaled_xyxy(boxes: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """(x, y, w, h) boxes as continuous (x0, y0, x1, y1) extents in a resized image, float64."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([b[:, 0] * sx, b[:, 1] * sy, (b[:, 0] + b[:, 2]) * sx, (b[:, 1] + b[:, 3]) * sy], axis=1)


def _checked_open(path: str, width: int, height: int) -> Image.Image:
    img = open_rgb(path)
    if img.size != (width, height):
        # Boxes in another frame than the index's would be silently wrong.
        raise ValueError(f"{path} is {img.size[0]}x{img.size[1]} but the index recorded {width}x{height}")
    return img


class _CropImages(Dataset):
    """Item i: the kept-box crops of image i, (B, S, S, 3) uint8 (normalised later, on the device)."""

    def __init__(self, images: Sequence[tuple[str, int, int]], kept: Sequence[np.ndarray], size: int) -> None:
        self.images, self.kept, self.size = list(images), list(kept), size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(crop_rois(_checked_open(*self.images[i]), self.kept[i], self.size))


class _WholeImages(Dataset):
    """Item i: image i resized to the short side, (H, W, 3) uint8, and its kept boxes as scaled xyxy float64."""

    def __init__(
        self, images: Sequence[tuple[str, int, int]], kept: Sequence[np.ndarray], short: int, max_long: int
    ) -> None:
        self.images, self.kept, self.short, self.max_long = list(images), list(kept), short, max_long

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rgb, sx, sy = resize_short_side(_checked_open(*self.images[i]), self.short, self.max_long)
        return torch.from_numpy(rgb), torch.from_numpy(scaled_xyxy(self.kept[i], sx, sy))


class RoiEmbedder:
    """The online backbone in eval mode, turning crops or whole images + boxes into unit RoI embeddings.

    Counts backbone forwards: crops (crop mode, padding excluded) and images (roi_align mode). pad=False skips the
    zero-padding of short batches (cheaper for one small image at a time, but then per-crop results may differ in
    the last bits with the batch size).
    """

    def __init__(
        self,
        backbone: nn.Module,
        device: str | torch.device = "cpu",
        batch_size: int = 256,
        precision: str = "fp32",
        pad: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = torch.device(device)
        self.backbone = backbone.eval().to(self.device)
        self.dtype = next(self.backbone.parameters()).dtype
        self.batch_size = batch_size
        self.pad = pad
        self.amp = autocast_dtype(precision, self.device)
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device, dtype=self.dtype).view(shape)
        self.std = torch.tensor(IMAGENET_STD, device=self.device, dtype=self.dtype).view(shape)
        self.crop_forwards = 0
        self.padded_forwards = 0
        self.image_forwards = 0

    def _autocast(self) -> contextlib.AbstractContextManager:
        # Without autocast, IEEE fp32: cuDNN would otherwise run the convolutions as TF32 on Ampere and newer.
        return torch.autocast(self.device.type, dtype=self.amp) if self.amp else ieee_fp32()

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        # ToTensor (x / 255) then Normalize, as torchvision does, but on the device and in the model's dtype.
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).to(self.dtype).div_(255)
        return (x - self.mean) / self.std

    @staticmethod
    def _unit(feat: torch.Tensor) -> np.ndarray:
        if feat.dtype in (torch.float16, torch.bfloat16):
            feat = feat.float()  # normalise in float32 whatever the autocast dtype was
        return F.normalize(feat, dim=1).cpu().numpy()

    @torch.inference_mode()
    def embed_crops(self, crops: torch.Tensor) -> np.ndarray:
        """(B, S, S, 3) uint8 crops -> (B, D) unit embeddings; every forward is a full (zero-padded) batch."""
        out = []
        for s in range(0, len(crops), self.batch_size):
            chunk = crops[s : s + self.batch_size]
            n = len(chunk)
            if n < self.batch_size and self.pad:
                pad = chunk.new_zeros((self.batch_size - n, *chunk.shape[1:]))
                chunk = torch.cat([chunk, pad])
            with self._autocast():
                feat = global_pool(self.backbone(self._input(chunk)))
            out.append(self._unit(feat[:n]))
            self.crop_forwards += n
            self.padded_forwards += len(chunk) - n
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)

    @torch.inference_mode()
    def embed_rois(self, image: torch.Tensor, boxes_xyxy: torch.Tensor, output_size: int = 7) -> np.ndarray:
        """One (H, W, 3) uint8 image and its (B, 4) xyxy boxes (in that image's pixels) -> (B, D) unit embeddings."""
        from torchvision.ops import roi_align

        x = self._input(image[None])
        with self._autocast():
            fmap = self.backbone(x)
        # The nominal stride (32 for res5) rather than the ratio of odd sizes, as torchvision's MultiScaleRoIAlign.
        scale = 2.0 ** round(math.log2(fmap.shape[-1] / x.shape[-1]))
        fmap = fmap.float() if self.amp else fmap  # pool in float32 after an autocast forward
        rois = roi_align(
            fmap,
            [boxes_xyxy.to(self.device, dtype=fmap.dtype)],
            output_size=(output_size, output_size),
            spatial_scale=scale,
            sampling_ratio=2,
            aligned=True,  # boxes are continuous extents [x, x + w): no half-pixel offset
        )
        self.image_forwards += 1
        return self._unit(rois.mean(dim=(2, 3)))


def embed_kept(
    embedder: RoiEmbedder,
    images: Sequence[tuple[str, int, int]],
    kept: Sequence[np.ndarray],
    settings: RoiSettings,
    out: np.ndarray,
    workers: int = 0,
    label: str = "roi-embed",
) -> None:
    """Embed every kept box of `images` (path, width, height) into the rows of `out`, image after image."""
    total = sum(len(k) for k in kept)
    if out.shape[0] != total:
        raise ValueError(f"output holds {out.shape[0]} rows for {total} kept boxes")
    dataset: Dataset
    if settings.mode == "crop":
        dataset = _CropImages(images, kept, settings.crop_size)
    else:
        dataset = _WholeImages(images, kept, settings.image_size, settings.max_long_side)
    loader = DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=workers, pin_memory=embedder.device.type == "cuda"
    )
    step = max(1, len(images) // 10)
    row = 0
    pending: list[torch.Tensor] = []
    npending = 0
    bs = embedder.batch_size
    for i, item in enumerate(loader, 1):
        if settings.mode == "crop":
            # Crops of consecutive images fill full batches; rows of `out` follow the same order.
            pending.append(item)
            npending += len(item)
            if npending >= bs:
                crops = torch.cat(pending)
                full = npending // bs * bs
                out[row : row + full] = embedder.embed_crops(crops[:full])
                row += full
                pending, npending = [crops[full:]], npending - full
        else:
            image, boxes = item
            try:
                emb = embedder.embed_rois(image, boxes, settings.output_size)
            except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError and CPU allocator errors
                if not isinstance(e, MemoryError) and "alloc" not in str(e).lower() and "memory" not in str(e).lower():
                    raise
                path, w, h = images[i - 1]
                raise MemoryError(
                    f"{path} ({w}x{h}, resized to {image.shape[1]}x{image.shape[0]}): out of memory embedding its "
                    f"{len(boxes)} boxes in roi_align mode ({str(e).splitlines()[0][:200]})"
                ) from e
            out[row : row + len(emb)] = emb
            row += len(emb)
        if i % step == 0 or i == len(images):
            print(f"{label}: {i}/{len(images)} images, {row}/{total} boxes embedded", file=sys.stderr)
    if npending:
        out[row : row + npending] = embedder.embed_crops(torch.cat(pending))
        row += npending
    if row != total:
        raise RuntimeError(f"embedded {row} of {total} kept boxes")


def image_tasks(
    root_paths: Sequence[Path | str], widths: np.ndarray, heights: np.ndarray
) -> list[tuple[str, int, int]]:
    """(path, width, height) triples, the picklable per-image input of the RoI datasets."""
    return [(str(p), int(w), int(h)) for p, w, h in zip(root_paths, widths, heights)]
