"""ORL's object-level training dataset (ORL_SPEC section 3): a global pair, an intra-RoI pair and an inter-RoI pair.

Per image i and iteration, under the per-sample RNG of SeededDataset (so runs are deterministic and resume exactly):
- global: the two BYOL views of the whole image at image_size;
- intra-RoI: a kept box b1 of image i, uniformly, and its jittered copy b2 (orl.data.roi_jitter);
- inter-RoI: one of the K neighbours k uniformly, then one of the mined pairs of (i, k) uniformly, no jitter;
  its first box is cropped from image i, its second from image k.
Every RoI is cropped from the full-resolution image, resized to roi_size x roi_size (bilinear) and augmented with
the view-1 patch recipe (first RoI of a pair) or the view-2 recipe (second RoI); the recipes are ORL's (BYOL's
asymmetric pair, orl.methods.ORL.recipe), without the crop.

Boxes and pairs come from the stage-2 artifact `correspondence`, read one row at a time and opened lazily in the
process that reads (a DataLoader worker), never before the fork: h5py handles do not survive one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from orl.artifacts import Artifact, ArtifactError, check_no_self_neighbors, open_artifact
from orl.data.augment import ViewRecipe, patch_view_transform, two_view_transforms
from orl.data.datasets import SeededDataset, register_dataset
from orl.data.device_augment import (IMAGES_KEY, PATHS_KEY, DevicePatchTransform, DeviceViewTransform,
                                     resolve_pipeline, view_entries)
from orl.data.device_decode import check_decode, load_source
from orl.data.image_index import ImageIndex
from orl.data.images import open_rgb
from orl.data.roi_jitter import TRIES, jitter_box

CORRESPONDENCE_STAGE = "correspondence"


def _open_checked(path: Path, index: ImageIndex) -> Artifact:
    if index.source is not None:
        return open_artifact(path, stage=CORRESPONDENCE_STAGE, like=index.source)
    # An index built in memory (tests, benchmarks) has no file to compare with: compare digests directly.
    art = open_artifact(path, stage=CORRESPONDENCE_STAGE)
    if art.image_list_digest != index.digest:
        digest = art.image_list_digest
        art.close()
        raise ArtifactError(
            f"{path} was made from image list {digest} but the image index {index.root} has image list "
            f"{index.digest}: rerun correspondence mining from the current image index"
        )
    return art


def check_boxes_inside(path: str | os.PathLike, boxes: np.ndarray, offsets: np.ndarray, index: ImageIndex) -> None:
    """Refuse xywh boxes that are empty or reach outside their image (1 px of rounding allowed)."""
    owner = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    x, y, w, h = (boxes[:, j].astype(np.int64) for j in range(4))
    bad = (x < 0) | (y < 0) | (w < 1) | (h < 1) | (x + w > index.widths[owner] + 1) | (y + h > index.heights[owner] + 1)
    if bad.any():
        k = int(np.argmax(bad))
        i = int(owner[k])
        raise ArtifactError(
            f"{path}: {int(bad.sum())} box(es) are empty or outside their image, e.g. {boxes[k].tolist()} (xywh) in "
            f"{index.file_names[i]} ({index.widths[i]}x{index.heights[i]}); rerun correspondence mining"
        )


def check_correspondence(path: str | os.PathLike, index: ImageIndex) -> int:
    """Open-check-close the correspondence artifact against the index (in the main process); return K."""
    path = Path(path)
    n = len(index)
    with _open_checked(path, index) as art:
        nb = art.dataset("neighbors")
        if nb.ndim != 2 or nb.shape[0] != n or nb.shape[1] < 1:
            raise ArtifactError(f"{path}: neighbors has shape {nb.shape}, expected ({n}, K) for {n} images")
        k = int(nb.shape[1])
        neighbors = nb[()]
        if neighbors.min() < 0 or neighbors.max() >= n:
            raise ArtifactError(f"{path}: neighbour indices outside [0, {n})")
        check_no_self_neighbors(path, neighbors)
        box_offsets = art.dataset("boxes/offsets")[()]
        box_counts = np.diff(box_offsets)
        pair_counts = np.diff(art.dataset("pairs/offsets")[()])
        if len(box_counts) == n:
            check_boxes_inside(path, art.dataset("boxes/values")[()].reshape(-1, 4), box_offsets, index)
    if len(box_counts) != n or (box_counts < 1).any():
        raise ArtifactError(f"{path}: boxes must have {n} rows with at least one box each")
    if len(pair_counts) != n * k or (pair_counts < 1).any():
        raise ArtifactError(f"{path}: pairs must have N*K = {n * k} rows with at least one pair each")
    return k


class CorrespondenceReader:
    """Row reads of the correspondence artifact, opened on first use in the reading process.

    On opening, the CSR offsets and the neighbour table are read into memory (paper scale: about 20 MB per worker)
    and the value datasets kept as handles, so a sample costs two small HDF5 reads instead of eight lookups.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._art: Artifact | None = None
        self._pid: int | None = None

    def _artifact(self) -> Artifact:
        # Reopen after a fork too: a handle opened in the parent (e.g. workers=0 earlier) must not be reused.
        if self._art is None or self._pid != os.getpid():
            art = open_artifact(self.path, stage=CORRESPONDENCE_STAGE)
            self._rows = {name: (art.dataset(f"{name}/offsets")[()], art.dataset(f"{name}/values"))
                          for name in ("boxes", "pairs")}
            self._neighbors = art.dataset("neighbors")[()]
            self._art, self._pid = art, os.getpid()
        return self._art

    def _row(self, name: str, i: int) -> np.ndarray:
        self._artifact()
        offsets, values = self._rows[name]
        return values[offsets[i] : offsets[i + 1]]

    @property
    def is_open(self) -> bool:
        """True when this process holds an open handle."""
        return self._art is not None and self._pid == os.getpid()

    def boxes(self, i: int) -> np.ndarray:
        """Kept boxes of image i, (B_i, 4) xywh."""
        return self._row("boxes", i).reshape(-1, 4)

    def neighbors(self, i: int) -> np.ndarray:
        """The K neighbour indices of image i."""
        self._artifact()
        return self._neighbors[i]

    def pairs(self, row: int) -> np.ndarray:
        """Mined pairs of row q * K + j, (T, 8) = (query box, neighbour box)."""
        return self._row("pairs", row).reshape(-1, 8)

    def close(self) -> None:
        """Close this process's handle, if any."""
        if self.is_open:
            self._art.close()
        self._art, self._pid = None, None

    def __getstate__(self) -> dict[str, Any]:
        # spawn / forkserver workers get a pickled dataset: send the path, never a handle.
        return {"path": self.path, "_art": None, "_pid": None}


@dataclass(frozen=True)
class RoiDraw:
    """The boxes drawn for one sample: intra pair of image `index`, inter pair with image `neighbor`."""

    index: int
    box_id: int  # row of boxes[index] used as b1
    intra1: np.ndarray
    intra2: np.ndarray
    neighbor_slot: int  # j in 0..K-1
    neighbor: int  # image index of the j-th neighbour
    pair_id: int  # row of pairs[index * K + j]
    inter1: np.ndarray  # box in image `index`
    inter2: np.ndarray  # box in image `neighbor`


def crop_resize(img: Image.Image, box: np.ndarray, size: int) -> Image.Image:
    """Crop an (x, y, w, h) box from the full image and resize it to size x size, bilinear (as the authors)."""
    x, y, w, h = (int(v) for v in box)
    return img.crop((x, y, x + w, y + h)).resize((size, size), Image.BILINEAR)


def _randint(n: int) -> int:
    return int(torch.randint(n, ()).item())


class ORLDataset(SeededDataset):
    """{"view1", "view2", "intra1", "intra2", "inter1", "inter2", "index", "neighbor"} per image.

    Device pipeline: instead of the six views, "images" (image i, then its neighbour unless it is i) and each
    view's "<view>_geo" / "<view>_photo" rows (orl.data.device_augment), built on the training device.
    """

    def __init__(
        self,
        index: ImageIndex,
        correspondence: str | os.PathLike,
        views: tuple[ViewRecipe, ViewRecipe],
        image_size: int = 224,
        roi_size: int = 96,
        seed: int = 0,
        jitter_tries: int = TRIES,
        pipeline: str = "cpu",
        decode: str = "worker",
    ) -> None:
        super().__init__(index, seed)
        if roi_size < 1:
            raise ValueError(f"roi_size must be positive, got {roi_size}")
        self.correspondence = Path(correspondence)
        self.k = check_correspondence(self.correspondence, index)
        self.reader = CorrespondenceReader(self.correspondence)
        self.image_size, self.roi_size, self.jitter_tries = image_size, roi_size, jitter_tries
        # Device pipeline: whole images + each view's geometry and parameters (orl.data.device_augment).
        self.decode = check_decode(decode) if resolve_pipeline(pipeline, "cpu") == "device" else None
        if self.decode is not None:
            self.view1, self.view2 = (DeviceViewTransform(v, image_size) for v in views)
            self.patch1, self.patch2 = (DevicePatchTransform(v, roi_size) for v in views)
        else:
            self.view1, self.view2 = two_view_transforms(image_size, views)
            self.patch1, self.patch2 = patch_view_transform(views[0]), patch_view_transform(views[1])

    def draw_rois(self, i: int, img_w: int, img_h: int) -> RoiDraw:
        """Draw the intra and inter boxes of image i from the torch RNG (order: box, jitter, neighbour, pair)."""
        boxes = self.reader.boxes(i)
        b = _randint(len(boxes))
        b1 = boxes[b].astype(np.int64)
        b2 = jitter_box(b1, img_w, img_h, tries=self.jitter_tries)
        j = _randint(self.k)
        neighbor = int(self.reader.neighbors(i)[j])
        pairs = self.reader.pairs(i * self.k + j)
        t = _randint(len(pairs))
        pair = pairs[t].astype(np.int64)
        return RoiDraw(i, b, b1, b2, j, neighbor, t, pair[:4], pair[4:])

    def sample(self, i: int) -> dict[str, Any]:
        """Decode image i (and its drawn neighbour), crop the RoIs, apply the view and patch recipes."""
        if self.decode is not None:
            return self.device_sample(i)
        img = open_rgb(self.index.path(i))
        d = self.draw_rois(i, *img.size)
        other = img if d.neighbor == i else open_rgb(self.index.path(d.neighbor))
        s = self.roi_size
        # Built in this order: it is the order the views consume the per-sample RNG.
        out: dict[str, Any] = {}
        out.update(view_entries("view1", self.view1(img)))
        out.update(view_entries("view2", self.view2(img)))
        out.update(view_entries("intra1", self.patch1(crop_resize(img, d.intra1, s))))
        out.update(view_entries("intra2", self.patch2(crop_resize(img, d.intra2, s))))
        out.update(view_entries("inter1", self.patch1(crop_resize(img, d.inter1, s))))
        out.update(view_entries("inter2", self.patch2(crop_resize(other, d.inter2, s))))
        return {**out, "index": i, "neighbor": d.neighbor}

    def device_sample(self, i: int) -> dict[str, Any]:
        """The device pipeline's sample: images i and its neighbour (once if the same), every view's rows."""
        path = self.index.path(i)
        img, pixels = load_source(path, self.decode)
        d = self.draw_rois(i, *img.size)
        images, paths, other = [pixels], [str(path)], 0
        if d.neighbor != i:
            other_path = self.index.path(d.neighbor)
            images.append(load_source(other_path, self.decode)[1])
            paths.append(str(other_path))
            other = 1
        out: dict[str, Any] = {IMAGES_KEY: images, PATHS_KEY: paths}
        # The cpu pipeline's RNG order: view1, view2, then the patches' flips and parameters.
        out.update(view_entries("view1", self.view1(img)))
        out.update(view_entries("view2", self.view2(img)))
        out.update(view_entries("intra1", self.patch1(d.intra1)))
        out.update(view_entries("intra2", self.patch2(d.intra2)))
        out.update(view_entries("inter1", self.patch1(d.inter1)))
        out.update(view_entries("inter2", self.patch2(d.inter2, source=other)))
        return {**out, "index": i, "neighbor": d.neighbor}


def orl_dataset(
    index: ImageIndex,
    views: tuple[ViewRecipe, ViewRecipe],
    image_size: int = 224,
    seed: int = 0,
    correspondence: str | os.PathLike | None = None,
    roi_size: int = 96,
    jitter_tries: int = TRIES,
    pipeline: str = "cpu",
    decode: str = "worker",
) -> ORLDataset:
    """build_dataset factory of ORL; needs the stage-2 correspondence artifact."""
    if correspondence is None:
        raise ValueError(
            "ORL trains on the mined RoI pairs: pass the stage-2 correspondence artifact "
            "(orl pretrain --method orl --correspondence mining/correspondence.h5)"
        )
    return ORLDataset(index, correspondence, views, image_size=image_size, roi_size=roi_size, seed=seed,
                      jitter_tries=jitter_tries, pipeline=pipeline, decode=decode)


register_dataset("orl", orl_dataset)
