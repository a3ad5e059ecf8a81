"""The feature bank (ORL_SPEC 2a): one L2-normalised embedding per image, row i = image i of the index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from orl.data.augment import eval_transform
from orl.data.image_index import ImageIndex
from orl.data.images import open_rgb
from orl.precision import AUTOCAST_DTYPES, autocast_dtype, ieee_fp32

PRECISIONS = AUTOCAST_DTYPES


class _IndexImages(Dataset):
    """Image i of the index, resized (short side) + centre-cropped + normalised."""

    def __init__(self, index: ImageIndex, resize: int, crop: int) -> None:
        # Plain paths (not the index) so the dataset pickles cheaply into spawned workers.
        self.paths: list[Path] = [index.path(i) for i in range(len(index))]
        self.transform = eval_transform(size=crop, resize=resize)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(open_rgb(self.paths[i]))


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`None` or "auto" -> the first GPU when there is one, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def compute_features(
    model: nn.Module,
    index: ImageIndex,
    *,
    resize: int = 256,
    crop: int = 224,
    batch_size: int = 256,
    workers: int = 4,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    progress: bool = False,
) -> np.ndarray:
    """Embed every image of `index` with `model.embed` in eval mode: (N, D) float32, L2-normalised rows."""
    if crop > resize:
        raise ValueError(f"crop ({crop}) must not exceed resize ({resize}): the centre crop would pad the image")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if not hasattr(model, "embed"):
        raise TypeError(f"{type(model).__name__} has no .embed(x); expected an orl Method")
    dev = resolve_device(device)
    dataset = _IndexImages(index, resize, crop)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,  # row i must be image i
        num_workers=workers,
        pin_memory=dev.type == "cuda",
        persistent_workers=False,
    )
    # Autocast only on GPU: CPU bf16 convolutions are slower than fp32 on most CPUs.
    amp_dtype = autocast_dtype(precision, dev)
    was_training = model.training
    model.eval().to(dev)  # BN running statistics, no dropout (ORL_SPEC 2a)
    out: np.ndarray | None = None
    pos = 0
    batches = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc="features", unit="batch", mininterval=10)
    try:
        with torch.inference_mode():
            for images in batches:
                images = images.to(dev, non_blocking=True)
                # fp32 means IEEE fp32: cuDNN would otherwise run the convolutions as TF32 on Ampere and newer.
                ctx = torch.autocast(dev.type, dtype=amp_dtype) if amp_dtype else ieee_fp32()
                with ctx:
                    z = model.embed(images)
                if z.ndim != 2 or z.shape[0] != images.shape[0]:
                    raise ValueError(f"model.embed returned shape {tuple(z.shape)} for a batch of {images.shape[0]}")
                # Normalise in float32 whatever the autocast dtype was.
                z = F.normalize(z.float(), dim=1).cpu().numpy()
                if out is None:
                    out = np.empty((len(dataset), z.shape[1]), dtype=np.float32)
                out[pos : pos + len(z)] = z
                pos += len(z)
    finally:
        model.train(was_training)
    if out is None or pos != len(dataset):
        raise RuntimeError(f"embedded {pos} of {len(dataset)} images")
    return out
