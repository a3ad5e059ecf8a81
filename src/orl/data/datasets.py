"""Training datasets and the sampler that makes their augmentations reproducible.

Augmentation randomness is a pure function of (seed, epoch, image index): the sampler yields `(epoch, i)` keys and
the dataset seeds torch's RNG from them around each sample. So the same image gets the same views whatever the
number of DataLoader workers, processes or the point where a run was resumed; a single process and a 2-process DDP
run see identical views for the same global batch.

Images are decoded (and, for ORL, stage-2 artifacts read) inside `__getitem__`, i.e. in the DataLoader workers; a
dataset must open any HDF5 file lazily there, never in `__init__`, because h5py handles do not survive a fork.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from orl.data.augment import Transform, ViewRecipe, two_view_transforms
from orl.data.device_augment import IMAGES_KEY, PATHS_KEY, DeviceViewTransform, resolve_pipeline, view_entries
from orl.data.device_decode import check_decode, load_source
from orl.data.image_index import ImageIndex
from orl.data.images import open_rgb

SampleKey = tuple[int, int]  # (epoch, image index)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed derived from (run seed, epoch, image index) without collisions between nearby keys."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0]) >> 1


def _unpack(key: SampleKey | int) -> tuple[int, int]:
    # Plain integer keys (e.g. a bare DataLoader without SeededSampler) mean epoch 0.
    if isinstance(key, (tuple, list)):
        return int(key[0]), int(key[1])
    return 0, int(key)


class SeededDataset(Dataset):
    """Base of the training datasets: `sample(i)` runs under a torch RNG seeded from (seed, epoch, i)."""

    def __init__(self, index: ImageIndex, seed: int = 0) -> None:
        self.index = index
        self.seed = seed

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: SampleKey | int) -> dict[str, Any]:
        epoch, i = _unpack(key)
        if not 0 <= i < len(self):
            raise IndexError(f"image index {i} out of range for {len(self)} images")
        # fork_rng keeps the caller's RNG stream untouched (matters when workers=0 and we run in the main process).
        # Only the CPU generator is seeded (augmentations draw nothing else): torch.manual_seed would also reseed
        # the training process's CUDA generators, outside fork_rng's reach, and costs 0.4 ms per sample.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, i))
            return self.sample(i)

    def sample(self, i: int) -> dict[str, Any]:
        """Build training example i (called with the per-sample RNG already seeded)."""
        raise NotImplementedError


class TwoViewDataset(SeededDataset):
    """Two augmented views of each whole image: {"view1", "view2", "index"} (BYOL, MoCo v2, SimCLR).

    With the device pipeline (`decode` set, DeviceViewTransform transforms) a sample is instead the image under
    "images" (decoded in the worker or still JPEG bytes, per `decode`) with each view's geometry and photometric
    rows (orl.data.device_augment).
    """

    def __init__(
        self, index: ImageIndex, transform1: Transform, transform2: Transform, seed: int = 0, decode: str | None = None
    ) -> None:
        super().__init__(index, seed)
        self.transform1, self.transform2 = transform1, transform2
        self.decode = None if decode is None else check_decode(decode)

    def sample(self, i: int) -> dict[str, Any]:
        """Decode image i and apply the two view transforms (device pipeline: draw them)."""
        path = self.index.path(i)
        if self.decode is None:
            img = open_rgb(path)
            return {"view1": self.transform1(img), "view2": self.transform2(img), "index": i}
        img, pixels = load_source(path, self.decode)
        views = {**view_entries("view1", self.transform1(img)), **view_entries("view2", self.transform2(img))}
        return {IMAGES_KEY: [pixels], PATHS_KEY: [str(path)], **views, "index": i}


class SeededSampler(Sampler[SampleKey]):
    """Per-epoch shuffled (epoch, i) keys for one process, laid out so the global batch does not depend on the split.

    Each epoch draws one permutation (seeded by seed + epoch), keeps `steps_per_epoch` full global batches
    (global batch = batch_size x num_replicas x accum_steps; the remainder is dropped, like drop_last) and gives
    micro-batch a of optimiser step s on rank r the contiguous block starting at s G + (a R + r) b. So 1 process
    with accum 2 and 2 processes with accum 1 train on exactly the same images per step, and each DDP rank's batch
    equals one accumulation micro-batch. BatchNorm statistics then match only with per-process BN: under SyncBN
    (the GPU DDP default) more ranks normalise over the whole global batch, accumulation over one micro-batch.
    `set_epoch(e, skip)` resumes mid-epoch.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        accum_steps: int = 1,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.size, self.batch_size, self.num_replicas, self.rank = size, batch_size, num_replicas, rank
        self.accum_steps, self.shuffle, self.seed = accum_steps, shuffle, seed
        self.global_batch = batch_size * num_replicas * accum_steps
        self.steps_per_epoch = size // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{size} images cannot fill one global batch of {self.global_batch} (batch {batch_size} x "
                f"{num_replicas} processes x {accum_steps} accumulation steps); lower --batch-size"
            )
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch's permutation and drop this rank's first `skip` samples (resume inside an epoch)."""
        self.epoch, self.skip = epoch, skip

    def indices(self) -> list[int]:
        """This rank's image indices for the current epoch in consumption order, before skipping."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g)
        else:
            order = torch.arange(self.size)
        b, r = self.batch_size, self.num_replicas
        # (steps, accum, replicas, batch) -> this rank's (steps, accum, batch) blocks.
        blocks = order[: self.steps_per_epoch * self.global_batch].view(self.steps_per_epoch, self.accum_steps, r, b)
        return blocks[:, :, self.rank, :].reshape(-1).tolist()

    def __iter__(self) -> Iterator[SampleKey]:
        return iter([(self.epoch, i) for i in self.indices()[self.skip :]])

    def __len__(self) -> int:
        return self.steps_per_epoch * self.accum_steps * self.batch_size - self.skip


# Method name -> factory(index, views, image_size, seed, pipeline, **kwargs) -> dataset. ORL registers its own (it needs the
# kNN and correspondence artifacts); every image-level method uses the two-view dataset. The view recipes are the
# method's (orl.methods: Method.recipe), passed in by the caller: this layer does not know the methods.
DatasetFactory = Callable[..., SeededDataset]
Views = tuple[ViewRecipe, ViewRecipe]


def two_view_dataset(
    index: ImageIndex, views: Views, image_size: int = 224, seed: int = 0, pipeline: str = "cpu",
    decode: str = "worker", **_: Any,
) -> TwoViewDataset:
    """Two views of each image at `image_size` with the method's (view 1, view 2) recipes, in `pipeline`'s split."""
    if resolve_pipeline(pipeline, "cpu") == "device":
        t1, t2 = (DeviceViewTransform(v, image_size) for v in views)
        return TwoViewDataset(index, t1, t2, seed=seed, decode=decode)
    return TwoViewDataset(index, *two_view_transforms(image_size, views), seed=seed)


DATASETS: dict[str, DatasetFactory] = {"byol": two_view_dataset, "moco_v2": two_view_dataset, "simclr": two_view_dataset}


# Datasets that register themselves from their own module (which imports this one), loaded on first use.
DATASET_MODULES: dict[str, str] = {"orl": "orl.data.orl_dataset"}


def register_dataset(method_name: str, factory: DatasetFactory) -> None:
    """Make `build_dataset(method_name, ...)` use `factory` (e.g. ORL's object-level dataset)."""
    DATASETS[method_name] = factory


def build_dataset(
    method_name: str, index: ImageIndex, views: Views, image_size: int = 224, seed: int = 0, pipeline: str = "cpu",
    **kwargs: Any,
) -> SeededDataset:
    """The training dataset a method needs with its view recipes; extra kwargs (e.g. ORL's artifacts) go to its factory.

    pipeline "cpu": workers return finished float views; "device": whole uint8 images (or JPEG bytes, with
    decode="device") + each view's geometry and photometric parameters, finished on the training device by
    orl.data.device_augment.finish_views (batches collated by orl.data.device_augment.collate_samples).

    Callers normally use orl.methods.build_training_dataset, which passes the method's own recipe.
    """
    if method_name not in DATASETS and method_name in DATASET_MODULES:
        importlib.import_module(DATASET_MODULES[method_name])  # registers itself on import
    if method_name not in DATASETS:
        raise ValueError(f"no training dataset registered for method {method_name!r}; known: {sorted(DATASETS)}")
    return DATASETS[method_name](index, views=views, image_size=image_size, seed=seed, pipeline=pipeline, **kwargs)
