"""The image index: the ordered image list that every later artifact indexes by position.

Built from a COCO instances JSON plus its image folder (order = the JSON's `images` list) or from a plain folder of
images (order = sorted relative paths). Every image is fully decoded once here, so an unreadable file is left out
with a warning instead of crashing a training worker days later. The image-list digest covers each image's name, id,
size and the SHA-256 of its file bytes, so two folders with the same names but other pixels never match.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from orl.artifacts import IMAGE_DIGEST_VERSION, open_artifact, write_artifact
from orl.data.images import IMAGE_SUFFIXES, ImageReadError, open_rgb, scan_folder

STAGE = "image_index"


class DatasetError(RuntimeError):
    """The input dataset is missing, empty or inconsistent."""


@dataclass
class ImageIndex:
    """An ordered image list: position i in every artifact means image i here."""

    root: Path
    file_names: list[str]
    ids: np.ndarray
    widths: np.ndarray
    heights: np.ndarray
    sha256: list[str] = field(default_factory=list)  # hex SHA-256 of each image file's bytes
    annotations: Path | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    source: Path | None = None  # the index artifact this was loaded from, if any

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.int64)
        self.widths = np.asarray(self.widths, dtype=np.int32)
        self.heights = np.asarray(self.heights, dtype=np.int32)

    def __len__(self) -> int:
        return len(self.file_names)

    def path(self, i: int) -> Path:
        """Absolute path of image i."""
        return self.root / self.file_names[i]

    @property
    def digest(self) -> str:
        """Digest of the list (names, ids, sizes, file contents), independent of where the folder lives."""
        if len(self.sha256) != len(self.file_names):
            raise DatasetError(f"image index {self.source or self.root}: file hashes missing; rebuild the index")
        h = hashlib.sha256()
        rows = zip(self.file_names, self.ids.tolist(), self.widths.tolist(), self.heights.tolist(), self.sha256)
        for name, i, w, hh, sha in rows:
            h.update(f"{name}\t{i}\t{w}\t{hh}\t{sha}\n".encode())
        return h.hexdigest()[:16]


def shard_range(n: int, shards: int, shard: int) -> tuple[int, int]:
    """The contiguous [start, stop) slice of n images that shard `shard` of `shards` covers."""
    if shards < 1 or not 0 <= shard < shards:
        raise ValueError(f"shard {shard} of {shards} is not a valid shard")
    return n * shard // shards, n * (shard + 1) // shards


def coco_id(value: object, annotations: str | os.PathLike, where: str) -> int:
    """A COCO id as int; DatasetError naming the file and the entry when it is not a whole number."""
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().lstrip("-").isdigit():
        raise DatasetError(f"{annotations}: {where} is {value!r}, not an integer id")
    return int(value)


def _read_coco_images(annotations: Path, root: Path) -> tuple[list[str], list[int]]:
    try:
        with open(annotations) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{annotations}: not valid JSON ({e})") from e
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DatasetError(f"{annotations}: no 'images' list; is this a COCO instances file?")
    names, ids = [], []
    for k, entry in enumerate(images):
        if not isinstance(entry, dict) or "file_name" not in entry or "id" not in entry:
            raise DatasetError(f"{annotations}: images[{k}] lacks 'file_name' or 'id'")
        names.append(str(entry["file_name"]))
        ids.append(coco_id(entry["id"], annotations, f"images[{k}].id"))
    dupes = {n for n in names if names.count(n) > 1} if len(set(names)) != len(names) else set()
    if dupes:
        raise DatasetError(f"{annotations}: file names listed more than once: {sorted(dupes)[:5]}")
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{annotations}: image ids are not unique")
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise DatasetError(
            f"{annotations} names {len(missing)} image(s) that are not in {root}, e.g. {missing[:3]}; "
            "check the image folder or the annotations file"
        )
    return names, ids


def _probe(path: Path) -> tuple[int, int, str] | str:
    """(width, height, SHA-256 of the file) of a decodable image, else the reason it cannot be read."""
    if path.stat().st_size == 0:
        return "empty file"
    try:
        img = open_rgb(path)
    except ImageReadError as e:
        return str(e.__cause__ or e)
    with open(path, "rb") as f:  # just decoded, so read from the page cache
        sha = hashlib.file_digest(f, "sha256").hexdigest()
    return (*img.size, sha)


def build_index(image_dir: str | os.PathLike, annotations: str | os.PathLike | None = None, threads: int = 1) -> ImageIndex:
    """Build the image list from a COCO JSON + folder, or from a plain folder; unreadable images are left out."""
    root = Path(image_dir).resolve()
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist")
    ann = Path(annotations).resolve() if annotations else None
    if ann is not None:
        if not ann.is_file():
            raise DatasetError(f"annotations file {ann} does not exist")
        names, ids = _read_coco_images(ann, root)
    else:
        scan = scan_folder(root)
        names = scan.images
        ids = list(range(len(names)))
        others = scan.other_files
        if others:
            warnings.warn(f"ignored {len(others)} file(s) in {root} without an image suffix "
                          f"({', '.join(IMAGE_SUFFIXES)}): {'; '.join(others[:10])}", stacklevel=2)
        if scan.unencodable:
            warnings.warn(f"left out {len(scan.unencodable)} file(s) in {root} whose names are not valid UTF-8 "
                          f"(rename them): {'; '.join(scan.unencodable[:10])}", stacklevel=2)
        if scan.loops:
            warnings.warn(f"did not follow {len(scan.loops)} directory symlink(s) in {root} back to a folder already "
                          f"indexed (a loop or a second link): {'; '.join(scan.loops[:10])}", stacklevel=2)
        if scan.broken_links:
            warnings.warn(f"left out {len(scan.broken_links)} symlink(s) in {root} that point to nothing: "
                          f"{'; '.join(scan.broken_links[:10])}", stacklevel=2)
    if not names:
        raise DatasetError(f"no images found in {ann or root}")

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        probes = list(pool.map(_probe, [root / n for n in names]))

    kept = [k for k, p in enumerate(probes) if not isinstance(p, str)]
    skipped = [(names[k], probes[k]) for k, p in enumerate(probes) if isinstance(p, str)]
    if skipped:
        listing = "; ".join(f"{n}: {why}" for n, why in skipped[:10])
        warnings.warn(f"left out {len(skipped)} unreadable image(s) from {root}: {listing}", stacklevel=2)
    if not kept:
        raise DatasetError(f"none of the {len(names)} images in {root} could be decoded")
    return ImageIndex(
        root=root,
        file_names=[names[k] for k in kept],
        ids=np.array([ids[k] for k in kept]),
        widths=np.array([probes[k][0] for k in kept]),
        heights=np.array([probes[k][1] for k in kept]),
        sha256=[probes[k][2] for k in kept],
        annotations=ann,
        skipped=skipped,
    )


def write_index(index: ImageIndex, out: str | os.PathLike) -> Path:
    """Write the index as an artifact (its own digest is the image-list digest every later artifact records)."""
    return write_artifact(
        out,
        stage=STAGE,
        image_list_digest=index.digest,
        params={"root": str(index.root), "annotations": str(index.annotations) if index.annotations else None},
        arrays={
            "file_names": np.array(index.file_names, dtype=object).astype(str),
            "ids": index.ids,
            "widths": index.widths,
            "heights": index.heights,
            "sha256": np.array(index.sha256, dtype=object).astype(str),
        },
        attrs={
            "image_root": str(index.root),
            "annotations": str(index.annotations) if index.annotations else "",
            "num_images": len(index),
            "skipped": [list(s) for s in index.skipped],
        },
    )


def load_index(path: str | os.PathLike) -> ImageIndex:
    """Read an index artifact back, checking that its content still matches its recorded digest."""
    with open_artifact(path, stage=STAGE) as art:
        if art.attrs.get("image_digest_version") != IMAGE_DIGEST_VERSION or "sha256" not in art:
            raise DatasetError(
                f"{path} was written by an older orl whose image-list digest covered only names and sizes; rebuild "
                f"it with `orl index` (Snakemake: `snakemake --forcerun index_images`), then every later stage reruns"
            )
        index = ImageIndex(
            root=Path(art.attrs["image_root"]),
            file_names=[str(s) for s in art.array("file_names")],
            ids=art.array("ids"),
            widths=art.array("widths"),
            heights=art.array("heights"),
            sha256=[str(s) for s in art.array("sha256")],
            annotations=Path(art.attrs["annotations"]) if art.attrs.get("annotations") else None,
            skipped=[tuple(s) for s in art.attrs.get("skipped", [])],
            source=Path(path),
        )
        if index.digest != art.image_list_digest:
            raise DatasetError(f"{path}: contents do not match the recorded image-list digest; rebuild the index")
    return index
