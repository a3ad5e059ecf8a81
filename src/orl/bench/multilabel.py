"""Multi-label image sets for the SVM benchmarks: PASCAL VOC2007, or "which categories appear" on a COCO-format set.

Labels follow VOC's per-class files (ImageSets/Main/<class>_<split>.txt): 1 = present, -1 = absent,
0 = only "difficult" instances (ignored at test time). Classes are sorted by name and images by name, as the
authors' create_voc_data_files.py does, so class k and image i mean the same thing here as in their files.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

POSITIVE, NEGATIVE, DIFFICULT = 1, -1, 0


@dataclass
class MultiLabelSet:
    """Images of one split with an (N, C) int8 label matrix in VOC's 1 / -1 / 0 convention."""

    paths: list[Path]
    names: list[str]
    labels: np.ndarray
    classes: list[str]

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int8)
        if self.labels.shape != (len(self.paths), len(self.classes)) or len(self.names) != len(self.paths):
            raise ValueError(
                f"labels {self.labels.shape} do not match {len(self.paths)} images x {len(self.classes)} classes"
            )

    def __len__(self) -> int:
        return len(self.paths)


def _read_id_list(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; is this a VOCdevkit/VOC2007 folder?")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _labels_from_class_files(main: Path, split: str, ids: list[str]) -> tuple[list[str], np.ndarray] | None:
    # The authors' source of truth: one file per class, "<image id> <label>" per line.
    files = sorted(p for p in main.glob(f"*_{split}.txt") if len(p.stem.split("_")) == 2)
    if not files:
        return None
    row = {name: i for i, name in enumerate(ids)}
    classes = [p.stem.split("_")[0] for p in files]
    labels = np.full((len(ids), len(classes)), NEGATIVE, dtype=np.int8)
    for c, path in enumerate(files):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] in row:
                labels[row[parts[0]], c] = int(parts[1])
    return classes, labels


def _labels_from_xml(root: Path, ids: list[str]) -> tuple[list[str], np.ndarray]:
    # Same rule VOC used to write the class files: a class with a non-difficult object is present (1), one with
    # difficult objects only is 0, otherwise -1.
    found: list[dict[str, bool]] = []
    names: set[str] = set()
    for image_id in ids:
        per_class: dict[str, bool] = {}
        tree = ET.parse(root / "Annotations" / f"{image_id}.xml")
        for obj in tree.getroot().iter("object"):
            name = (obj.findtext("name") or "").strip()
            difficult = (obj.findtext("difficult") or "0").strip() == "1"
            per_class[name] = per_class.get(name, False) or not difficult
            names.add(name)
        found.append(per_class)
    classes = sorted(names)
    col = {c: j for j, c in enumerate(classes)}
    labels = np.full((len(ids), len(classes)), NEGATIVE, dtype=np.int8)
    for i, per_class in enumerate(found):
        for name, has_easy in per_class.items():
            labels[i, col[name]] = POSITIVE if has_easy else DIFFICULT
    return classes, labels


def read_voc(root: str | os.PathLike, split: str) -> MultiLabelSet:
    """VOCdevkit/VOC2007 split ("trainval" or "test"): class files when present, else the XML annotations."""
    root = Path(root)
    main = root / "ImageSets" / "Main"
    ids = sorted(_read_id_list(main / f"{split}.txt"))
    from_files = _labels_from_class_files(main, split, ids)
    classes, labels = from_files if from_files is not None else _labels_from_xml(root, ids)
    paths = [root / "JPEGImages" / f"{i}.jpg" for i in ids]
    return MultiLabelSet(paths=paths, names=ids, labels=labels, classes=classes)


def read_coco_multilabel(annotations: str | os.PathLike, images: str | os.PathLike) -> MultiLabelSet:
    """Scene multi-label classification from a COCO instances file: category present in the image or not.

    A category seen only as crowd regions is marked 0 (ignored), like VOC's difficult-only classes. Classes are
    named by category name and sorted by category id (the demo's ids are its class order).
    """
    doc = json.loads(Path(annotations).read_text(encoding="utf-8"))
    cats = sorted(doc["categories"], key=lambda c: c["id"])
    col = {c["id"]: j for j, c in enumerate(cats)}
    images_sorted = sorted(doc["images"], key=lambda im: im["file_name"])
    row = {im["id"]: i for i, im in enumerate(images_sorted)}
    has_easy: dict[tuple[int, int], bool] = defaultdict(bool)
    for ann in doc.get("annotations", []):
        if ann["image_id"] in row and ann["category_id"] in col:
            key = (row[ann["image_id"]], col[ann["category_id"]])
            has_easy[key] = has_easy[key] or not ann.get("iscrowd", 0)
    labels = np.full((len(images_sorted), len(cats)), NEGATIVE, dtype=np.int8)
    for (i, j), easy in has_easy.items():
        labels[i, j] = POSITIVE if easy else DIFFICULT
    root = Path(images)
    return MultiLabelSet(
        paths=[root / im["file_name"] for im in images_sorted],
        names=[im["file_name"] for im in images_sorted],
        labels=labels,
        classes=[c["name"] for c in cats],
    )
