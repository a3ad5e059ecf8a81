"""An ImageFolder-style object-classification set cut from a COCO instances file: one crop per annotated object.

Layout: <out>/<split>/<category name>/<image stem>_<annotation id>.jpg. Each non-crowd box is grown by `context`
of its side on every side, made square around its centre (so resizing does not distort the object), clipped
to the image, and resized to `size` x `size`. Boxes smaller than `min_box` pixels on a side are skipped; an optional
cap per category keeps demo runs short. The demo uses this for the linear and semi-supervised benchmarks
(train split -> train/, val split -> val/).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from orl.data.images import open_rgb

JPEG_QUALITY = 95


def crop_box(
    x: float, y: float, w: float, h: float, width: int, height: int, context: float
) -> tuple[int, int, int, int]:
    """Square (left, top, right, bottom) around the box centre, side = max(w, h) x (1 + 2 context), clipped."""
    side = max(w, h) * (1.0 + 2.0 * context)
    cx, cy = x + w / 2.0, y + h / 2.0
    left, top = max(0, int(round(cx - side / 2))), max(0, int(round(cy - side / 2)))
    right, bottom = min(width, int(round(cx + side / 2))), min(height, int(round(cy + side / 2)))
    return left, top, max(right, left + 1), max(bottom, top + 1)


def safe_name(name: str) -> str:
    """A category name usable as a folder name."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip(".") or "unnamed"


def _select(anns: list[dict], max_per_class: int | None, seed: int) -> list[dict]:
    # Cap each category at max_per_class objects, drawn with a per-category seed (independent of the others).
    if max_per_class is None:
        return anns
    by_cat: dict[int, list[dict]] = {}
    for ann in sorted(anns, key=lambda a: a["id"]):
        by_cat.setdefault(ann["category_id"], []).append(ann)
    kept = []
    for cat, group in by_cat.items():
        if len(group) > max_per_class:
            idx = np.random.default_rng([seed, cat]).choice(len(group), size=max_per_class, replace=False)
            group = [group[i] for i in sorted(idx)]
        kept.extend(group)
    return kept


def write_crops(
    annotations: str | os.PathLike,
    images: str | os.PathLike,
    out: str | os.PathLike,
    *,
    size: int = 64,
    context: float = 0.1,
    min_box: float = 4.0,
    max_per_class: int | None = None,
    seed: int = 0,
) -> Counter:
    """Write one split's crops under `out` (one folder per category, also empty ones); returns crops per category.

    `max_per_class` caps the objects of each category (a seeded sample), to keep demo runs short.
    """
    doc = json.loads(Path(annotations).read_text(encoding="utf-8"))
    names = {c["id"]: safe_name(c["name"]) for c in doc["categories"]}
    out = Path(out)
    for name in names.values():
        (out / name).mkdir(parents=True, exist_ok=True)
    usable = [
        ann
        for ann in doc.get("annotations", [])
        if not ann.get("iscrowd", 0) and ann["category_id"] in names and min(ann["bbox"][2:]) >= min_box
    ]
    by_image: dict[int, list[dict]] = {}
    for ann in _select(usable, max_per_class, seed):
        by_image.setdefault(ann["image_id"], []).append(ann)
    counts: Counter = Counter()
    for im in sorted(doc["images"], key=lambda im: im["file_name"]):
        anns = by_image.get(im["id"])
        if not anns:
            continue
        img = open_rgb(Path(images) / im["file_name"])
        stem = Path(im["file_name"]).stem
        for ann in sorted(anns, key=lambda a: a["id"]):
            box = crop_box(*ann["bbox"], img.width, img.height, context)
            crop = img.crop(box).resize((size, size), Image.Resampling.BICUBIC)
            name = names[ann["category_id"]]
            crop.save(out / name / f"{stem}_{ann['id']}.jpg", quality=JPEG_QUALITY)
            counts[name] += 1
    return counts


def build_crop_folder(
    splits: dict[str, tuple[str | os.PathLike, str | os.PathLike]],
    out: str | os.PathLike,
    *,
    size: int = 64,
    context: float = 0.1,
    min_box: float = 4.0,
    max_per_class: dict[str, int | None] | None = None,
    seed: int = 0,
) -> dict[str, dict[str, int]]:
    """Write every split ({split: (annotations json, image folder)}) under out/<split>/, atomically; returns counts.

    `max_per_class` maps a split to its per-category cap (None or absent: no cap). Built in a temporary sibling
    folder and renamed into place, so a crash never leaves a half-written set.
    """
    out = Path(out)
    caps = max_per_class or {}
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        counts = {}
        for split, (ann, img) in splits.items():
            found = write_crops(
                ann,
                img,
                tmp / split,
                size=size,
                context=context,
                min_box=min_box,
                max_per_class=caps.get(split),
                seed=seed,
            )
            counts[split] = dict(sorted(found.items()))
        manifest = {
            "size": size,
            "context": context,
            "min_box": min_box,
            "max_per_class": caps,
            "seed": seed,
            "counts": counts,
        }
        (tmp / "crops.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts
