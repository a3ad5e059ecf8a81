"""Stage-2c region proposals: selective search on whole images, raw (x, y, w, h) int32 boxes, reproducible order.

Two backends:
- "opencv" (the authors'): cv2.ximgproc.segmentation selective search, fast mode, default parameters
  (base k 150, increment 150, sigma 0.8; HSV + Lab), on the full-resolution image.
- "selectivesearch": the pure-Python `selectivesearch` package (different box distribution, much slower).

Why OpenCV's order is not reproducible, and the fix: SelectiveSearchSegmentationImpl::hierarchicalGrouping gives
every region rank = level * rand() / RAND_MAX using the C library's *global* rand(), and process() sorts all regions
by that rank (then drops duplicate rectangles, keeping the first). rand() is never seeded by OpenCV and its state
carries over from image to image (and cv::setRNGSeed does not touch it: it seeds cv::RNG only), so the same image
gives the same set of boxes in a different order on every call. We reseed libc with srand(per-image seed) right
before process(). That keeps the authors' semantics exactly (random rank weighted by hierarchy level: small regions
tend to come first but order is randomised) instead of substituting another ordering, and makes the order a pure
function of (image, seed, image position). It relies on one thread calling rand() during process(), which holds in
our worker processes (single-threaded Python, cv2.setNumThreads(1); selective search itself calls rand() serially).
The order is reproducible for one C library: glibc's rand() sequence is stable across versions, but macOS or
Windows C libraries give different (still reproducible) orders.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np

from orl.data.image_index import ImageIndex
from orl.data.images import load_rgb

BACKENDS = ("opencv", "selectivesearch")

# OpenCV fast-mode defaults, passed explicitly so a change of OpenCV's defaults cannot change our boxes silently.
OPENCV_BASE_K = 150
OPENCV_INC_K = 150
OPENCV_SIGMA = 0.8


@dataclass(frozen=True)
class ProposalSettings:
    """Everything that determines one image's raw boxes (besides the image and its position)."""

    backend: str = "opencv"
    seed: int = 0
    max_side: int | None = None  # None = full resolution (paper)
    # Per-image guard (a deviation that touches only extreme images): selective search on a 20 x 20000 image runs
    # for more than 10 minutes, so such images are searched on a resized copy (boxes mapped back). None = off.
    guard_long_side: int | None = 4000
    guard_aspect: float | None = 10.0
    # selectivesearch backend only (the package README's example values; its own defaults over-segment badly)
    scale: float = 500.0
    sigma: float = 0.9
    min_size: int = 10

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown proposal backend {self.backend!r}; choose from {BACKENDS}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")
        if self.max_side is not None and self.max_side < 1:
            raise ValueError(f"max_side must be positive (or None for full resolution), got {self.max_side}")
        if self.guard_long_side is not None and self.guard_long_side < 16:
            raise ValueError(f"guard_long_side must be at least 16 (or None), got {self.guard_long_side}")
        if self.guard_aspect is not None and self.guard_aspect < 1:
            raise ValueError(f"guard_aspect must be at least 1 (or None), got {self.guard_aspect}")

    def params(self) -> dict:
        """The parameters recorded in (and digested into) the artifacts; only those the backend uses."""
        p = {"backend": self.backend, "seed": self.seed, "max_side": self.max_side,
             "guard_long_side": self.guard_long_side, "guard_aspect": self.guard_aspect}
        if self.backend == "opencv":
            p.update(base_k=OPENCV_BASE_K, inc_k=OPENCV_INC_K, sigma=OPENCV_SIGMA, mode="fast")
        else:
            p.update(scale=self.scale, sigma=self.sigma, min_size=self.min_size)
        return p


def image_seed(seed: int, position: int) -> int:
    """The 32-bit seed for the image at `position`: independent of sharding, different for every image."""
    return int(np.random.SeedSequence([int(seed), int(position)]).generate_state(1, dtype=np.uint32)[0])


def _load_srand() -> Callable[[int], None]:
    # The C library OpenCV links against: the process's global symbols on POSIX, the MS C runtime on Windows.
    lib = ctypes.CDLL(None) if os.name == "posix" else ctypes.CDLL(ctypes.util.find_library("c") or "msvcrt")
    srand = lib.srand
    srand.argtypes = [ctypes.c_uint]
    srand.restype = None
    return srand


_SRAND: Callable[[int], None] | None = None


def _srand(value: int) -> None:
    global _SRAND
    if _SRAND is None:
        _SRAND = _load_srand()
    _SRAND(value)


def opencv_boxes(rgb: np.ndarray, rand_seed: int) -> np.ndarray:
    """OpenCV fast selective search on an RGB image; libc's rand() is reseeded first so the order is reproducible."""
    import cv2

    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)  # OpenCV's HSV/Lab conversions expect BGR
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(bgr)
    ss.switchToSelectiveSearchFast(OPENCV_BASE_K, OPENCV_INC_K, OPENCV_SIGMA)
    _srand(rand_seed)  # immediately before process(): nothing else may call rand() in between
    rects = ss.process()
    return np.asarray(rects, dtype=np.int32).reshape(-1, 4)


def _unique_first(boxes: np.ndarray) -> np.ndarray:
    """Drop repeated boxes, keeping each one's first occurrence and the original order."""
    if len(boxes) == 0:
        return boxes
    _, first = np.unique(boxes, axis=0, return_index=True)
    return boxes[np.sort(first)]


def selectivesearch_boxes(rgb: np.ndarray, scale: float, sigma: float, min_size: int) -> np.ndarray:
    """The `selectivesearch` package's regions as unique (x, y, w, h) boxes, in its (deterministic) order."""
    import selectivesearch

    with warnings.catch_warnings():
        # skimage warns about LBP on float images inside the package; nothing we can act on.
        warnings.simplefilter("ignore")
        _, regions = selectivesearch.selective_search(rgb, scale=scale, sigma=sigma, min_size=min_size)
    if not regions:
        return np.zeros((0, 4), dtype=np.int32)
    # The package reports (min_x, min_y, max_x - min_x, max_y - min_y) with inclusive max pixels; +1 gives the
    # pixel width/height, the same convention as OpenCV's cv::Rect (a one-pixel region is 1 x 1, not 0 x 0).
    rect = np.array([r["rect"] for r in regions], dtype=np.int64).reshape(-1, 4)
    rect[:, 2:] += 1
    return _unique_first(rect.astype(np.int32))


def downscale(rgb: np.ndarray, max_side: int | None) -> np.ndarray:
    """A copy whose longer side is at most max_side (area interpolation); the image itself when already small."""
    h, w = rgb.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return rgb
    import cv2

    s = max_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def guarded_size(height: int, width: int, long_side: int | None, aspect: float | None) -> tuple[int, int] | None:
    """(h, w) an extreme image is searched at, or None when it is within the guard.

    Beyond `aspect` the long dimension alone is shrunk to short side x aspect (the short side keeps its detail);
    then, beyond `long_side`, both sides are scaled so the long side is `long_side`.
    """
    h, w = float(height), float(width)
    if aspect is not None and max(h, w) > aspect * min(h, w):
        h, w = (aspect * w, w) if h > w else (h, aspect * h)
    if long_side is not None and max(h, w) > long_side:
        s = long_side / max(h, w)
        h, w = h * s, w * s
    size = (max(1, round(h)), max(1, round(w)))
    return None if size == (height, width) else size


def map_boxes_back(boxes: np.ndarray, small_hw: tuple[int, int], full_hw: tuple[int, int]) -> np.ndarray:
    """Scale boxes found on a resized copy back to the full image: outward rounding, clipped inside the image."""
    if len(boxes) == 0 or small_hw == full_hw:
        return boxes.astype(np.int32)
    sy, sx = full_hw[0] / small_hw[0], full_hw[1] / small_hw[1]
    b = boxes.astype(np.float64)
    H, W = full_hw
    x0 = np.clip(np.floor(b[:, 0] * sx), 0, W - 1)
    y0 = np.clip(np.floor(b[:, 1] * sy), 0, H - 1)
    x1 = np.clip(np.ceil((b[:, 0] + b[:, 2]) * sx), x0 + 1, W)
    y1 = np.clip(np.ceil((b[:, 1] + b[:, 3]) * sy), y0 + 1, H)
    out = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1).astype(np.int32)
    return _unique_first(out)


def propose(rgb: np.ndarray, settings: ProposalSettings, position: int) -> np.ndarray:
    """Raw boxes (B, 4) int32 (x, y, w, h) in full-image coordinates for the image at `position`."""
    guard = guarded_size(*rgb.shape[:2], settings.guard_long_side, settings.guard_aspect)
    small = rgb
    if guard is not None:
        import cv2

        small = cv2.resize(rgb, (guard[1], guard[0]), interpolation=cv2.INTER_AREA)
    small = downscale(small, settings.max_side)
    if settings.backend == "opencv":
        boxes = opencv_boxes(small, image_seed(settings.seed, position))
    else:
        boxes = selectivesearch_boxes(small, settings.scale, settings.sigma, settings.min_size)
    return map_boxes_back(boxes, small.shape[:2], rgb.shape[:2])


@dataclass(frozen=True)
class ImageTask:
    """One image to process: its index position, file, and the size the index recorded for it."""

    position: int
    path: str
    width: int
    height: int


@dataclass
class ImageResult:
    """Raw boxes for one image, or zero boxes and the reason it failed."""

    position: int
    boxes: np.ndarray
    error: str | None = None
    guarded: tuple[int, int] | None = None  # (h, w) the guard searched the image at, when it applied


def propose_task(task: ImageTask, settings: ProposalSettings) -> ImageResult:
    """Process one image; any failure yields zero boxes and a reason instead of an exception."""
    try:
        rgb = load_rgb(task.path)
        if rgb.shape[:2] != (task.height, task.width):
            # Boxes in another frame than the index's would be silently wrong downstream.
            raise ValueError(
                f"image is {rgb.shape[1]}x{rgb.shape[0]} but the index recorded {task.width}x{task.height}; "
                "the file changed since indexing"
            )
        guard = guarded_size(task.height, task.width, settings.guard_long_side, settings.guard_aspect)
        return ImageResult(task.position, propose(rgb, settings, task.position), guarded=guard)
    except Exception as e:  # noqa: BLE001 - one bad image must not take the shard down
        return ImageResult(task.position, np.zeros((0, 4), dtype=np.int32), f"{type(e).__name__}: {e}")


def init_worker() -> None:
    """Per-process setup: one OpenCV thread per worker (parallelism comes from processes)."""
    import cv2

    cv2.setNumThreads(1)


def propose_many(tasks: Sequence[ImageTask], settings: ProposalSettings, workers: int = 1) -> Iterator[ImageResult]:
    """Results for `tasks`, in task order, computed in `workers` processes (in this process when workers == 1)."""
    if workers <= 1 or len(tasks) <= 1:
        init_worker()
        for task in tasks:
            yield propose_task(task, settings)
        return
    # spawn, not fork: a forked child could inherit OpenCV/BLAS thread-pool state mid-use and deadlock.
    # ProcessPoolExecutor, not multiprocessing.Pool: a worker killed by the OS (e.g. out of memory) raises
    # BrokenProcessPool here instead of leaving the shard waiting forever.
    with ProcessPoolExecutor(
        max_workers=min(workers, len(tasks)), mp_context=get_context("spawn"), initializer=init_worker
    ) as pool:
        yield from pool.map(propose_task, tasks, [settings] * len(tasks), chunksize=1)


def tasks_for(index: ImageIndex, start: int, stop: int) -> list[ImageTask]:
    """ImageTasks for index positions [start, stop)."""
    return [
        ImageTask(i, str(index.path(i)), int(index.widths[i]), int(index.heights[i])) for i in range(start, stop)
    ]
