"""COCO-format instance data for the detection benchmark: images + instances JSON -> (image, target) pairs.

Training follows Detectron2's COCO loader: crowd annotations and degenerate boxes are dropped, images left with no
usable box are dropped, and batches come from an infinite shuffled stream split across ranks and grouped by aspect
ratio (landscape / portrait) so that padding stays small. As in Detectron2, the per-image records are pickled into
one flat byte array: DataLoader workers fork from the training process, and millions of small Python objects (the
COCO train2017 annotations) would be copied into every worker page by page as reference counts get touched.
The batch stream is a pure function of (seed, rank, world size, step), which is what makes resuming from a
checkpoint continue with exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

from orl.data.images import open_rgb

MIN_BOX_SIDE = 1.0  # px; Detectron2 drops boxes whose width or height is not positive, torchvision needs > 0


def load_coco(annotations: str | os.PathLike) -> COCO:
    """Read an instances JSON with pycocotools, without its progress prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(annotations))


def category_mapping(coco: COCO) -> list[int]:
    """COCO category ids in ascending order; contiguous label k (1-based, 0 = background) is ids[k - 1]."""
    return sorted(coco.getCatIds())


@dataclass(frozen=True)
class ImageRecord:
    """One image of the split: file, size, and the annotations the model trains on."""

    image_id: int
    path: Path
    height: int
    width: int
    annotations: tuple[dict, ...]


def _usable(ann: dict) -> bool:
    if ann.get("iscrowd", 0):
        return False  # crowd regions are "ignore" areas in COCOeval, never training targets
    _x, _y, w, h = ann["bbox"]
    return w >= MIN_BOX_SIDE and h >= MIN_BOX_SIDE


def segmentation_to_mask(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """Polygons, uncompressed or compressed RLE -> (H, W) uint8 mask (what COCO.annToMask does, without a COCO)."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle)


def image_records(coco: COCO, images_dir: str | os.PathLike, for_training: bool) -> list[ImageRecord]:
    """Images in ascending id order. Training: only those with a usable non-crowd box, with those boxes.
    Evaluation: every image, without annotations (COCOeval reads the ground truth from the JSON itself)."""
    records = []
    for image_id in sorted(coco.getImgIds()):
        info = coco.imgs[image_id]
        anns = tuple(a for a in coco.imgToAnns.get(image_id, []) if _usable(a)) if for_training else ()
        if for_training and not anns:
            continue
        records.append(ImageRecord(image_id, Path(images_dir) / info["file_name"], int(info["height"]),
                                   int(info["width"]), anns))
    return records


class CocoInstances(Dataset):
    """Item (i, flip) -> (float image CHW in [0, 1], target dict with boxes xyxy, labels, masks, image_id).

    Holds no reference to the COCO object: only pickled records in one byte array (see the module docstring).
    """

    def __init__(self, coco: COCO, images_dir: str | os.PathLike, for_training: bool) -> None:
        self.for_training = for_training
        records = image_records(coco, images_dir, for_training)
        if for_training and not records:
            raise ValueError(f"no image in {images_dir} has a usable (non-crowd, non-empty) box")
        self.category_ids = category_mapping(coco)
        self.label_of = {cat_id: k + 1 for k, cat_id in enumerate(self.category_ids)}
        self.image_ids = [r.image_id for r in records]
        self._groups = np.array([int(r.height > r.width) for r in records], dtype=np.int64)
        blobs = [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in records]
        self._offsets = np.cumsum([0] + [len(b) for b in blobs], dtype=np.int64)
        self._bytes = np.frombuffer(b"".join(blobs), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.image_ids)

    def record(self, index: int) -> ImageRecord:
        """The image record at `index` (unpickled on demand)."""
        return pickle.loads(self._bytes[self._offsets[index]:self._offsets[index + 1]].tobytes())

    def aspect_groups(self) -> np.ndarray:
        """0 for landscape / square images, 1 for portrait ones (Detectron2's aspect-ratio grouping)."""
        return self._groups

    def __getitem__(self, item: int | tuple[int, bool]) -> tuple[torch.Tensor, dict[str, Any]]:
        index, flip = item if isinstance(item, tuple) else (item, False)
        rec = self.record(index)
        image = pil_to_tensor(open_rgb(rec.path))
        h, w = image.shape[-2:]
        if (h, w) != (rec.height, rec.width):
            raise ValueError(f"{rec.path}: image is {w}x{h} but the annotations say {rec.width}x{rec.height}")
        target: dict[str, Any] = {"image_id": rec.image_id}
        if self.for_training:
            boxes = torch.tensor([a["bbox"] for a in rec.annotations], dtype=torch.float32).reshape(-1, 4)
            boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
            boxes[:, 0::2].clamp_(0, w)
            boxes[:, 1::2].clamp_(0, h)
            masks = np.stack([segmentation_to_mask(a["segmentation"], h, w) for a in rec.annotations])
            target["boxes"] = boxes
            target["labels"] = torch.tensor([self.label_of[a["category_id"]] for a in rec.annotations])
            target["masks"] = torch.from_numpy(masks)
            if flip:
                image = image.flip(-1)
                target["masks"] = target["masks"].flip(-1)
                target["boxes"] = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
        return image.float().div_(255.0), target


def collate(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Keep images of different sizes as a list (the detector pads them itself)."""
    return [b[0] for b in batch], [b[1] for b in batch]


class TrainBatchStream:
    """Infinite per-rank batches of (index, flip) from step `start` on, reproducible from (seed, rank, world size).

    Like Detectron2's TrainingSampler + AspectRatioGroupedDataset: every epoch is a fresh seeded permutation of
    all images, rank r takes every world-size-th element, and a batch is emitted as soon as one aspect bucket is full.
    Flips are drawn from the same seeded generator, so they too survive a resume.
    """

    def __init__(self, groups: np.ndarray, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start: int = 0) -> None:
        if batch_size < 1 or len(groups) == 0:
            raise ValueError("batch_size must be >= 1 and the dataset non-empty")
        self.groups, self.batch_size, self.seed = np.asarray(groups), batch_size, seed
        self.rank, self.world_size, self.start = rank, world_size, start

    def _elements(self) -> Iterator[tuple[int, bool]]:
        epoch = 0
        while True:
            rng = np.random.default_rng([self.seed, epoch])
            order, flips = rng.permutation(len(self.groups)), rng.random(len(self.groups)) < 0.5
            yield from zip(order.tolist(), flips.tolist())
            epoch += 1

    def _batches(self) -> Iterator[list[tuple[int, bool]]]:
        buckets: dict[int, list[tuple[int, bool]]] = {0: [], 1: []}
        stream = self._elements()
        position = 0
        for item in stream:
            if position % self.world_size == self.rank:
                bucket = buckets[int(self.groups[item[0]])]
                bucket.append(item)
                if len(bucket) == self.batch_size:
                    yield list(bucket)
                    bucket.clear()
            position += 1

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        batches = self._batches()
        for _ in range(self.start):  # index arithmetic only: cheap even 90k steps in
            next(batches)
        yield from batches
