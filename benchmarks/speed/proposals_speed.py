"""Proposal throughput: images/s per process for each backend, and the speed-up from 1 to 2 worker processes.

Runs on the first --images photos of ../shared/data/coco128 when present (else synthetic 640x480 scenes), at full
resolution unless --max-side is given, and prints a markdown table with the machine it ran on. Also times the §2d
box filter on the raw boxes it produced.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speed/proposals_speed.py --images 4
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_inputs import benchmark_images, cpu_summary, image_tasks

from orl.mining.box_filter import filter_boxes
from orl.mining.proposals import BACKENDS, ImageTask, ProposalSettings, propose_many


def _machine() -> str:
    import cv2

    return f"{cpu_summary()}, Python {platform.python_version()}, OpenCV {cv2.__version__}"


def _timed(tasks: list[ImageTask], settings: ProposalSettings, workers: int) -> tuple[float, list[np.ndarray]]:
    t0 = time.perf_counter()
    results = list(propose_many(tasks, settings, workers))
    elapsed = time.perf_counter() - t0
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"proposal errors: {errors}")
    return elapsed, [r.boxes for r in results]


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="images per measurement (even, for 2 workers)")
    parser.add_argument("--max-side", type=int, default=None, help="downscale to this longer side (default: off)")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        paths, source = benchmark_images(Path(tmp), args.images)
        tasks = image_tasks(paths)
        mean_px = np.mean([t.width * t.height for t in tasks]) / 1e6
        size = "full resolution" if args.max_side is None else f"max side {args.max_side}"
        print(f"Machine: {_machine()}")
        print(f"Images: {source}, {mean_px:.2f} Mpx mean, {size}; wall time includes worker start-up.\n")
        print("| backend | raw boxes/img | 1 worker img/s | 2 workers img/s | per-process img/s (2 w.) "
              "| speed-up 1->2 | filter ms/img |")
        print("|---|---|---|---|---|---|---|")
        for backend in args.backends:
            settings = ProposalSettings(backend=backend, max_side=args.max_side)
            t1, boxes1 = _timed(tasks, settings, 1)
            t2, boxes2 = _timed(tasks, settings, 2)
            same = all(np.array_equal(a, b) for a, b in zip(boxes1, boxes2))
            t0 = time.perf_counter()
            for b in boxes1:
                filter_boxes(b)
            filt_ms = (time.perf_counter() - t0) / len(boxes1) * 1e3
            n = len(tasks)
            print(
                f"| {backend} | {np.mean([len(b) for b in boxes1]):.0f} | {n / t1:.3f} | {n / t2:.3f} | "
                f"{n / t2 / 2:.3f} | {t1 / t2:.2f}x | {filt_ms:.1f} |" + ("" if same else " (boxes DIFFER!)")
            )


if __name__ == "__main__":
    main()
