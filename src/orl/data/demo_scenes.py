"""Built-in demo dataset: deterministic synthetic scenes of textured shapes, written in COCO instances format.

Every category is a (shape, texture) pair, and the two colours of each instance are drawn at random, so only shape
and texture tell categories apart. A scene has a cluttered, low-contrast textured background (plus line and blob
clutter that belongs to no category) and several objects drawn in order: later objects occlude earlier ones, and
each annotation (RLE mask, tight box, area) describes the visible part only.

Guarantees (what the tests check):
- same seed and parameters -> byte-identical files; each split and each image has its own derived seed, so image k
  of a split does not change when `num_train` / `num_val` change;
- every image has between `min_objects` and `max_objects` annotations (objects that would end up too occluded are
  re-placed, never left in the image unannotated);
- every annotated object keeps at least MIN_VISIBLE_FRACTION of its full (unclipped, unoccluded) area visible and
  at least MIN_VISIBLE_PIXELS pixels; bbox is the tight box of the mask, area its pixel count.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

JPEG_QUALITY = 92
MIN_VISIBLE_FRACTION = 0.3
MIN_VISIBLE_PIXELS = 32
DEFAULT_SEED = 0
DEFAULT_NUM_TRAIN = 256
DEFAULT_NUM_VAL = 64
DEFAULT_IMAGE_SIZE = 128
DEFAULT_MIN_OBJECTS = 1
DEFAULT_MAX_OBJECTS = 3
MIN_IMAGE_SIZE = 32

_MAX_TRIES_PER_OBJECT = 40
_MAX_SCENE_ATTEMPTS = 50
_SPLIT_KEYS = {"train": 0, "val": 1}  # mixed into the seed so the splits never share a random stream
_SUPERCATEGORY = "shape"

# One (shape, texture) pair per category: both differ between categories, colour never does.
_CATEGORY_SPECS: list[tuple[str, str]] = [
    ("disc", "stripes"),
    ("square", "dots"),
    ("triangle", "checker"),
    ("star", "solid"),
    ("ring", "speckle"),
    ("cross", "gradient"),
    ("ellipse", "waves"),
    ("crescent", "grid"),
    ("hexagon", "concentric"),
    ("heart", "camouflage"),
]

CATEGORIES: list[dict] = [
    {"id": i + 1, "name": f"{shape}_{texture}", "supercategory": _SUPERCATEGORY}
    for i, (shape, texture) in enumerate(_CATEGORY_SPECS)
]


@dataclass(frozen=True)
class World:
    """The knobs of the scene distribution; sizes are fractions of the image side.

    The defaults make object identity the signal that two views of a scene share: few, large objects that stay
    whole inside the image, grey objects and grey backgrounds (colour would be a shortcut: BYOL's jitter shifts
    hue by at most 0.1, so random colours survive it and two views match by colour alone), little clutter. The
    original demo world (random colours, up to 6 small objects, heavy clutter) is
    World(scale=(0.06, 0.22), clutter=(4, 4), background_contrast=40, background_saturation=1,
    background_range=(40, 215), saturation=1, inside=False) with 2-6 objects at 160 px.
    """

    scale: tuple[float, float] = (0.18, 0.32)  # object radius range, log-uniform
    clutter: tuple[int, int] = (1, 1)  # at most this many line segments and blobs that belong to no category
    background_contrast: float = 25.0  # colour swing of the smooth background field
    background_saturation: float = 0.0  # 0: grey backgrounds, 1: fully random colours
    background_range: tuple[float, float] = (90.0, 160.0)  # range of the background's base level per channel
    background_grain: tuple[float, float] = (3.0, 8.0)  # range of the grey grain's standard deviation
    background_stripes: float = 0.5  # probability of faint stripes on the background
    textured: bool = True  # categories carry their texture; False: two-tone flat shapes, shape alone tells them apart
    num_categories: int = 10
    saturation: float = 0.0  # of the objects' colours: 0 grey, 1 fully random colours
    inside: bool = True  # centres drawn so that whole objects fit in the image (no border clipping)
    tones: tuple[float, float] | None = None  # fixed (dark, light) grey levels of every object; None: random colours

    def __post_init__(self) -> None:
        if not 0 < self.scale[0] <= self.scale[1] <= 0.5:
            raise ValueError(f"world.scale must satisfy 0 < lo <= hi <= 0.5, got {self.scale}")
        if not 1 <= self.num_categories <= len(_CATEGORY_SPECS):
            raise ValueError(f"world.num_categories must be 1..{len(_CATEGORY_SPECS)}, got {self.num_categories}")
        if min(self.clutter) < 0:
            raise ValueError(f"world.clutter counts must be >= 0, got {self.clutter}")

    @classmethod
    def from_mapping(cls, values: dict) -> "World":
        """A World from {knob: value} (lists become tuples); unknown knobs are an error naming them."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown demo world knob(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


DEFAULT_WORLD = World()


@dataclass(frozen=True)
class SceneObject:
    """One annotated object of a rendered scene."""

    category_id: int
    full_area: int  # pixels of the whole shape, before image clipping and occlusion
    full_mask: np.ndarray  # bool HxW: the shape clipped to the image, ignoring occlusion
    visible_mask: np.ndarray  # bool HxW: what is left visible in the final image


@dataclass(frozen=True)
class Scene:
    """A rendered image with its objects in drawing order (later ones on top)."""

    image: np.ndarray  # uint8 HxWx3
    objects: list[SceneObject]


# ---------------------------------------------------------------------------------------------------------------
# Shapes: boolean functions of normalised, rotated coordinates (u, v); the shape fits in the unit disc (radius s).


def _regular_polygon(u: np.ndarray, v: np.ndarray, sides: int, radius: float = 1.0) -> np.ndarray:
    """Inside a regular polygon with the given circumradius (orientation is moot: objects get rotated)."""
    apothem = radius * math.cos(math.pi / sides)
    inside = np.ones(u.shape, dtype=bool)
    for k in range(sides):
        phi = 2 * math.pi * k / sides + math.pi / 2 + math.pi / sides  # edge normals sit between vertices
        inside &= u * math.cos(phi) + v * math.sin(phi) <= apothem
    return inside


def _star(u: np.ndarray, v: np.ndarray, points: int = 5, inner: float = 0.45) -> np.ndarray:
    """Inside a star: fold the angle into one half-spike and test against the outer-inner vertex edge."""
    half = math.pi / points
    r = np.hypot(u, v)
    a = np.abs(np.mod(np.arctan2(v, u) + math.pi / 2, 2 * half) - half)  # 0 at a spike, half between spikes
    qx, qy = r * np.cos(a), r * np.sin(a)
    px, py = inner * math.cos(half), inner * math.sin(half)
    return (px - 1.0) * qy - py * (qx - 1.0) >= 0


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside the classic implicit heart curve, scaled into the unit disc."""
    x, y = 1.25 * u, -1.25 * v + 0.1  # image v points down; the heart's tip should too
    return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0


_SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "disc": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.75,
    "triangle": lambda u, v: _regular_polygon(u, v, 3),
    "star": _star,
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.55**2),
    "cross": lambda u, v: ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95)),
    "ellipse": lambda u, v: u * u + (v / 0.55) ** 2 <= 1.0,
    "crescent": lambda u, v: (u * u + v * v <= 1.0) & ((u - 0.5) ** 2 + v * v > 0.85**2),
    "hexagon": lambda u, v: _regular_polygon(u, v, 6),
    "heart": _heart,
}
_WINDOW_RADIUS = 1.1  # every shape above lies within this many radii of its centre


# ---------------------------------------------------------------------------------------------------------------
# Textures: a value t in [0, 1] per pixel that blends the instance's two colours. (a, b) are pixel offsets from the
# object centre in the object's rotated frame, so patterns rotate with the object.


def _rotate(a: np.ndarray, b: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate coordinates by angle (radians)."""
    c, s = math.cos(angle), math.sin(angle)
    return a * c + b * s, -a * s + b * c


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int, channels: int) -> np.ndarray:
    """Bilinearly upsampled random grid: smooth noise in [0, 1] of shape (height, width, channels)."""
    coarse = rng.random((cells + 1, cells + 1, channels))

    def weights(n: int) -> np.ndarray:
        pos = (np.arange(n) + 0.5) / n * cells
        i0 = np.minimum(pos.astype(int), cells - 1)
        frac = pos - i0
        w = np.zeros((n, cells + 1))
        w[np.arange(n), i0] = 1.0 - frac
        w[np.arange(n), i0 + 1] = frac
        return w

    wy, wx = weights(height), weights(width)
    return np.stack([wy @ coarse[..., c] @ wx.T for c in range(channels)], axis=-1)


def _texture(name: str, rng: np.random.Generator, a: np.ndarray, b: np.ndarray, scale: float) -> np.ndarray:
    """Texture value in [0, 1] for pixel offsets (a, b) of an object of radius `scale` px."""
    # Period grows with the object but never drops below a few pixels, or JPEG would wash the pattern out.
    period = max(4.0, scale * rng.uniform(0.3, 0.55))
    x, y = _rotate(a, b, rng.uniform(0, math.pi))
    if name == "stripes":
        return (np.sin(2 * math.pi * x / period) > 0).astype(np.float32)
    if name == "checker":
        return (np.mod(np.floor(x / (0.6 * period)) + np.floor(y / (0.6 * period)), 2)).astype(np.float32)
    if name == "dots":
        fx, fy = np.mod(x / period, 1.0) - 0.5, np.mod(y / period, 1.0) - 0.5
        return (fx * fx + fy * fy < 0.3**2).astype(np.float32)
    if name == "solid":
        return np.zeros(a.shape, dtype=np.float32)
    if name == "gradient":
        return np.clip((x / scale + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)
    if name == "speckle":
        # 2x2-pixel salt-and-pepper grains: fine enough to read as texture, coarse enough to survive JPEG.
        grains = rng.random(((a.shape[0] + 1) // 2, (a.shape[1] + 1) // 2)) > 0.5
        return np.repeat(np.repeat(grains, 2, axis=0), 2, axis=1)[: a.shape[0], : a.shape[1]].astype(np.float32)
    if name == "waves":
        return (np.sin(2 * math.pi * (y + 0.3 * period * np.sin(2 * math.pi * x / (2 * period))) / period) > 0).astype(
            np.float32
        )
    if name == "grid":
        width = max(1.5, period / 4)
        return ((np.mod(x, period) < width) | (np.mod(y, period) < width)).astype(np.float32)
    if name == "concentric":
        return (np.sin(2 * math.pi * np.hypot(a, b) / period) > 0).astype(np.float32)
    if name == "camouflage":
        cells = max(2, int(round(max(a.shape) / (1.2 * period))))
        return (_smooth_noise(rng, a.shape[0], a.shape[1], cells, 1)[..., 0] > 0.5).astype(np.float32)
    raise ValueError(f"unknown texture {name!r}")


# ---------------------------------------------------------------------------------------------------------------
# Background: smooth low-contrast colour field, faint pattern, pixel noise, then clutter that is no category.


def _background(rng: np.random.Generator, size: int, world: World) -> tuple[np.ndarray, np.ndarray]:
    """Textured background (float32 HxWx3) and its base colour."""
    base = rng.uniform(*world.background_range, size=3)
    base = base.mean() + world.background_saturation * (base - base.mean())
    c = world.background_contrast
    other = np.clip(base + rng.uniform(-c, c, size=3), 0, 255)
    other = other.mean() + world.background_saturation * (other - other.mean())
    field = _smooth_noise(rng, size, size, int(rng.integers(2, 6)), 1)
    canvas = base + field * (other - base)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if rng.random() < world.background_stripes:  # faint stripes in half of the backgrounds, so stripes alone do not mean "object"
        x, _ = _rotate(xx, yy, rng.uniform(0, math.pi))
        canvas += rng.uniform(4, 10) * np.sin(2 * math.pi * x / rng.uniform(5, 14))[..., None]
    canvas += rng.normal(0, rng.uniform(*world.background_grain), size=(size, size, 1))  # grey grain
    return canvas.astype(np.float32), base


def _clutter_colour(rng: np.random.Generator, base: np.ndarray, saturation: float) -> np.ndarray:
    """A colour moderately away from the background's, as saturated as the background."""
    step = rng.uniform(-70, 70, size=3)
    return np.clip(base + step.mean() + saturation * (step - step.mean()), 0, 255)


def _window(cx: float, cy: float, reach: float, size: int) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """In-image window around (cx, cy) and the pixel-centre coordinates (y, x) inside it."""
    y0, x0 = max(math.floor(cy - reach), 0), max(math.floor(cx - reach), 0)
    y1, x1 = max(min(math.ceil(cy + reach), size), y0), max(min(math.ceil(cx + reach), size), x0)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    return (slice(y0, y1), slice(x0, x1)), yy, xx


def _draw_clutter(rng: np.random.Generator, canvas: np.ndarray, base: np.ndarray, world: World) -> None:
    """Paint line segments and irregular blobs that belong to no category."""
    size = canvas.shape[0]
    for _ in range(int(rng.integers(0, world.clutter[0] + 1))):  # thick line segments
        p, q = rng.uniform(0, size, size=2), rng.uniform(0, size, size=2)
        width = rng.uniform(1.5, max(2.0, size / 40))
        mid, d = (p + q) / 2, q - p
        box, yy, xx = _window(mid[0], mid[1], float(np.abs(d).max()) / 2 + width, size)
        t = np.clip(((xx - p[0]) * d[0] + (yy - p[1]) * d[1]) / max(float(d @ d), 1e-6), 0, 1)
        near = np.hypot(xx - p[0] - t * d[0], yy - p[1] - t * d[1]) <= width / 2
        canvas[box][near] = _clutter_colour(rng, base, world.background_saturation)
    for _ in range(int(rng.integers(0, world.clutter[1] + 1))):  # lumpy blobs: star-convex with random low harmonics
        cx, cy = rng.uniform(0, size, size=2)
        radius = rng.uniform(0.04, 0.12) * size
        box, yy, xx = _window(cx, cy, 1.75 * radius + 1, size)  # harmonics add at most 0.75 radius
        phi = np.arctan2(yy - cy, xx - cx)
        edge = np.ones_like(phi)
        for k in (2, 3, 4):
            edge += rng.uniform(-0.25, 0.25) * np.cos(k * phi + rng.uniform(0, 2 * math.pi))
        inside = np.hypot(xx - cx, yy - cy) <= radius * edge
        colour = _clutter_colour(rng, base, world.background_saturation)
        canvas[box][inside] = colour + rng.normal(0, 6, size=(int(inside.sum()), 1))


# ---------------------------------------------------------------------------------------------------------------
# Objects.


@dataclass
class _Placed:
    """An accepted object while the scene is being built."""

    category_id: int
    full_area: int
    visible: int  # visible pixel count, updated as later objects cover it
    keep: int  # visible pixel count it must not drop below
    box: tuple[int, int, int, int]  # y0, y1, x0, x1 of its in-image window
    in_image: np.ndarray  # bool mask on that window, ignoring occlusion


def _min_visible(full_area: int) -> int:
    """Pixels an object must keep visible to be annotated."""
    return max(math.ceil(MIN_VISIBLE_FRACTION * full_area), MIN_VISIBLE_PIXELS)


def _instance_colours(rng: np.random.Generator, base: np.ndarray, saturation: float) -> tuple[np.ndarray, np.ndarray]:
    """Two clearly different random colours whose mix stands out from the background base colour."""
    for _ in range(100):
        c1, c2 = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
        c1, c2 = (c.mean() + saturation * (c - c.mean()) for c in (c1, c2))
        if np.linalg.norm(c1 - c2) >= 90 and np.linalg.norm((c1 + c2) / 2 - base) >= 60:
            break
    return c1, c2


def _try_place(
    rng: np.random.Generator,
    canvas: np.ndarray,
    owner: np.ndarray,
    placed: list[_Placed],
    base: np.ndarray,
    scale_hi: float,
    scale_lo: float,
    world: World,
) -> bool:
    """Sample one object; paint it and return True only if it and every earlier object stay visible enough."""
    size = canvas.shape[0]
    cat = int(rng.integers(world.num_categories))
    shape_name, texture_name = _CATEGORY_SPECS[cat]
    scale = float(math.exp(rng.uniform(math.log(scale_lo), math.log(scale_hi))))  # log-uniform: many small ones
    margin = min(scale, size / 2) if world.inside else 0.0
    cx, cy = rng.uniform(margin, size - margin, size=2)
    angle = rng.uniform(0, 2 * math.pi)

    # Evaluate the shape on its whole window, even outside the image, so border clipping counts as occlusion.
    reach = _WINDOW_RADIUS * scale + 1
    x0, x1 = math.floor(cx - reach), math.ceil(cx + reach)
    y0, y1 = math.floor(cy - reach), math.ceil(cy + reach)
    b, a = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    a, b = _rotate(a - cx, b - cy, angle)
    full = _SHAPES[shape_name](a / scale, b / scale)
    full_area = int(full.sum())
    keep = _min_visible(full_area)

    iy0, iy1, ix0, ix1 = max(y0, 0), min(y1, size), max(x0, 0), min(x1, size)
    if iy0 >= iy1 or ix0 >= ix1:
        return False
    crop = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
    in_image = full[crop]
    if int(in_image.sum()) < keep:
        return False
    covered = owner[iy0:iy1, ix0:ix1][in_image]
    stolen = np.bincount(covered[covered >= 0], minlength=len(placed))
    if any(p.visible - int(n) < p.keep for p, n in zip(placed, stolen)):
        return False

    c1, c2 = _instance_colours(rng, base, world.saturation)  # drawn even with fixed tones: same random stream
    if world.tones is not None:
        c1, c2 = np.full(3, world.tones[0]), np.full(3, world.tones[1])
    t = _texture(texture_name if world.textured else "solid", rng, a[crop], b[crop], scale)[..., None]
    colours = c1 + t * (c2 - c1) + rng.normal(0, 3, size=t.shape)  # mild grain so "solid" is not flat
    window = canvas[iy0:iy1, ix0:ix1]
    window[in_image] = colours[in_image]
    owner[iy0:iy1, ix0:ix1][in_image] = len(placed)
    for p, n in zip(placed, stolen):
        p.visible -= int(n)
    placed.append(_Placed(cat + 1, full_area, int(in_image.sum()), keep, (iy0, iy1, ix0, ix1), in_image))
    return True


def _render_once(rng: np.random.Generator, size: int, min_objects: int, max_objects: int, world: World) -> Scene | None:
    """One attempt at a scene; None if fewer than min_objects could be placed."""
    canvas, base = _background(rng, size, world)
    _draw_clutter(rng, canvas, base, world)
    owner = np.full((size, size), -1, dtype=np.int16)  # which object owns each pixel; -1 = background
    placed: list[_Placed] = []
    scale_lo = max(5.0, world.scale[0] * size)
    scale_hi = max(scale_lo * 1.01, world.scale[1] * size)
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        for attempt in range(_MAX_TRIES_PER_OBJECT):
            # Shrink the largest allowed size as tries fail, so crowded scenes still fit another object.
            hi = scale_lo * 1.01 + (scale_hi - scale_lo * 1.01) * (1 - attempt / _MAX_TRIES_PER_OBJECT)
            if _try_place(rng, canvas, owner, placed, base, hi, scale_lo, world):
                break
    if len(placed) < min_objects:
        return None
    canvas += rng.normal(0, 2.0, size=canvas.shape)  # sensor-like noise over everything
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    objects = []
    for k, p in enumerate(placed):
        full_mask = np.zeros((size, size), dtype=bool)
        iy0, iy1, ix0, ix1 = p.box
        full_mask[iy0:iy1, ix0:ix1] = p.in_image
        objects.append(SceneObject(p.category_id, p.full_area, full_mask, owner == k))
    return Scene(image, objects)


def render_scene(
    rng: np.random.Generator, image_size: int, min_objects: int, max_objects: int, world: World = DEFAULT_WORLD
) -> Scene:
    """Render one scene with between min_objects and max_objects annotated objects."""
    for _ in range(_MAX_SCENE_ATTEMPTS):
        scene = _render_once(rng, image_size, min_objects, max_objects, world)
        if scene is not None:
            return scene
    raise RuntimeError(
        f"could not fit {min_objects} objects into a {image_size} px image; lower min_objects or raise image_size"
    )


# ---------------------------------------------------------------------------------------------------------------
# COCO output.


def mask_annotation(mask: np.ndarray, *, ann_id: int, image_id: int, category_id: int) -> dict:
    """COCO annotation for a bool mask: RLE segmentation, tight bbox and area computed from the mask itself."""
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)],
        "area": float(xs.size),
        "iscrowd": 0,
        "segmentation": {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle["counts"].decode("ascii")},
    }


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent random stream per (seed, split, image)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _SPLIT_KEYS[split], index])))


def _write_split(
    root: Path, split: str, count: int, *, seed: int, image_size: int, min_objects: int, max_objects: int, world: World
) -> Path:
    """Render and write one split's images and instances JSON; return the JSON path."""
    image_dir = root / split
    image_dir.mkdir(parents=True)
    images, annotations = [], []
    for index in range(count):
        image_id = index + 1  # COCO ids start at 1
        scene = render_scene(_image_rng(seed, split, index), image_size, min_objects, max_objects, world)
        file_name = f"{image_id:06d}.jpg"
        # Fixed quality/subsampling and no EXIF: Pillow then writes the same bytes every time.
        Image.fromarray(scene.image, "RGB").save(image_dir / file_name, "JPEG", quality=JPEG_QUALITY, subsampling=0)
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
        for obj in scene.objects:
            ann = mask_annotation(
                obj.visible_mask, ann_id=len(annotations) + 1, image_id=image_id, category_id=obj.category_id
            )
            annotations.append(ann)
    doc = {
        "info": {
            "description": f"orl demo scenes ({split})",
            "version": "1",
            "params": {
                "seed": seed,
                "split": split,
                "image_size": image_size,
                "min_objects": min_objects,
                "max_objects": max_objects,
                "world": {k: list(v) if isinstance(v, tuple) else v for k, v in world.__dict__.items()},
            },
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES[: world.num_categories],
    }
    ann_path = root / "annotations" / f"instances_{split}.json"
    ann_path.parent.mkdir(parents=True, exist_ok=True)
    ann_path.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n", encoding="utf-8")
    return ann_path


def _check_params(num_train: int, num_val: int, image_size: int, min_objects: int, max_objects: int) -> None:
    """Reject parameters that cannot make a sensible dataset."""
    if num_train < 1 or num_val < 0:
        raise ValueError(f"need num_train >= 1 and num_val >= 0, got {num_train}, {num_val}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")


def generate_demo_dataset(
    out_dir: Path,
    *,
    seed: int = DEFAULT_SEED,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    image_size: int = DEFAULT_IMAGE_SIZE,
    min_objects: int = DEFAULT_MIN_OBJECTS,
    max_objects: int = DEFAULT_MAX_OBJECTS,
    world: World = DEFAULT_WORLD,
) -> dict[str, Path]:
    """Write the demo COCO dataset (train and val) to out_dir, replacing it; return its image and JSON paths."""
    _check_params(num_train, num_val, image_size, min_objects, max_objects)
    out_dir = Path(out_dir)
    # Build beside the target and rename at the end, so a crash never leaves a finished-looking half dataset.
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        params = dict(seed=seed, image_size=image_size, min_objects=min_objects, max_objects=max_objects, world=world)
        _write_split(tmp, "train", num_train, **params)
        _write_split(tmp, "val", num_val, **params)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "train_images": out_dir / "train",
        "val_images": out_dir / "val",
        "train_annotations": out_dir / "annotations" / "instances_train.json",
        "val_annotations": out_dir / "annotations" / "instances_val.json",
    }
