"""Small helpers shared by the benchmarks: device choice, thread settings, image transforms, data loaders."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from orl.data.augment import normalize_steps
from orl.data.images import open_rgb


def resolve_device(device: str | None = None) -> torch.device:
    """ "auto" / None -> the first GPU when there is one, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def set_threads(threads: int) -> None:
    """torch intra-op threads of this process (data workers are separate processes)."""
    torch.set_num_threads(max(1, int(threads)))


def squash_transform(size: int) -> Callable[[Any], torch.Tensor]:
    """Resize to size x size ignoring the aspect ratio (the authors' VOC07 SVM input), then normalise."""
    return v2.Compose(
        [
            v2.Resize((size, size), interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
            v2.PILToTensor(),
            *normalize_steps(),
        ]
    )


class PathImages(Dataset):
    """Image i = transform(open_rgb(paths[i])), with an optional integer label."""

    def __init__(
        self, paths: Sequence[str | os.PathLike], transform: Callable[[Any], torch.Tensor], labels: Sequence[int] = ()
    ) -> None:
        # Plain strings pickle cheaply into worker processes.
        self.paths = [str(p) for p in paths]
        self.labels = [int(y) for y in labels]
        if self.labels and len(self.labels) != len(self.paths):
            raise ValueError(f"{len(self.labels)} labels for {len(self.paths)} images")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor | tuple[torch.Tensor, int]:
        x = self.transform(open_rgb(Path(self.paths[i])))
        return (x, self.labels[i]) if self.labels else x


def make_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    device: torch.device | None = None,
) -> DataLoader:
    """A DataLoader with a seeded shuffle order and persistent workers only when there are workers."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=max(0, workers),
        generator=generator,
        drop_last=drop_last,
        pin_memory=device is not None and device.type == "cuda",
        persistent_workers=workers > 0,
    )
