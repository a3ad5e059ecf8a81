"""Stage `orl proposals`: raw selective-search boxes for one shard of the image index (ORL_SPEC §2c)."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from orl.artifacts import Csr, write_artifact
from orl.data.image_index import load_index, shard_range
from orl.mining.proposals import BACKENDS, ProposalSettings, propose_many, tasks_for

STAGE = "proposals_part"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `orl proposals`."""
    d = ProposalSettings()
    parser.add_argument("--index", required=True, type=Path, help="image index artifact (images.h5)")
    parser.add_argument("--shard", type=int, default=0, help="which shard to process (0-based)")
    parser.add_argument("--shards", type=int, default=1, help="total number of shards")
    parser.add_argument("--backend", choices=BACKENDS, default=d.backend, help="selective search implementation")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of the (reproducible) proposal order")
    parser.add_argument(
        "--max-side", type=int, default=None, help="run on a copy resized to this longer side (default: full size)"
    )
    parser.add_argument("--guard-long-side", type=int, default=d.guard_long_side,
                        help="images with a longer side beyond this are searched on a resized copy (0 = no limit)")
    parser.add_argument("--guard-aspect", type=float, default=d.guard_aspect,
                        help="images more elongated than this are searched squeezed to this aspect (0 = no limit)")
    parser.add_argument("--scale", type=float, default=d.scale, help="selectivesearch backend: felzenszwalb scale")
    parser.add_argument("--sigma", type=float, default=d.sigma, help="selectivesearch backend: felzenszwalb sigma")
    parser.add_argument("--min-size", type=int, default=d.min_size, help="selectivesearch backend: min segment size")
    parser.add_argument("--threads", type=int, default=1, help="worker processes (one OpenCV thread each)")
    parser.add_argument("--out", required=True, type=Path, help="part artifact to write (.h5)")


def settings_from_args(args: argparse.Namespace) -> ProposalSettings:
    """ProposalSettings from parsed flags."""
    return ProposalSettings(
        backend=args.backend,
        seed=args.seed,
        max_side=args.max_side,
        guard_long_side=args.guard_long_side or None,
        guard_aspect=args.guard_aspect or None,
        scale=args.scale,
        sigma=args.sigma,
        min_size=args.min_size,
    )


def _opencv_version() -> str:
    try:
        import cv2

        return cv2.__version__
    except ImportError:
        return "missing"


def run_shard(
    index_path: str | Path, shard: int, shards: int, settings: ProposalSettings, threads: int, out: str | Path
) -> Path:
    """Compute the shard's raw boxes and write them as a CSR part artifact; failed images get zero boxes."""
    index = load_index(index_path)
    start, stop = shard_range(len(index), shards, shard)
    tasks = tasks_for(index, start, stop)
    rows: list[np.ndarray] = []
    failed: list[list] = []
    guarded: list[list] = []
    t0 = time.monotonic()
    step = max(1, len(tasks) // 10)
    for k, result in enumerate(propose_many(tasks, settings, threads), 1):
        rows.append(result.boxes)
        if result.error is not None:
            failed.append([result.position, index.file_names[result.position], result.error])
        if result.guarded is not None:
            guarded.append([result.position, index.file_names[result.position], list(result.guarded)])
        if k % step == 0 or k == len(tasks):
            rate = k / max(time.monotonic() - t0, 1e-9)
            print(f"proposals shard {shard}/{shards}: {k}/{len(tasks)} images ({rate:.2f} img/s)", file=sys.stderr)
    boxes = Csr.from_rows(rows, row_shape=(4,), dtype=np.int32)
    if failed:
        listing = "; ".join(f"{name}: {why}" for _, name, why in failed[:10])
        warnings.warn(
            f"proposals shard {shard}/{shards}: {len(failed)} image(s) failed and got zero boxes: {listing}",
            stacklevel=2,
        )
    if guarded:
        listing = "; ".join(
            f"{name} ({index.widths[i]}x{index.heights[i]} searched at {w}x{h})" for i, name, (h, w) in guarded[:10]
        )
        warnings.warn(f"proposals shard {shard}/{shards}: {len(guarded)} extreme image(s) searched on a resized copy "
                      f"(--guard-long-side / --guard-aspect): {listing}", stacklevel=2)
    return write_artifact(
        out,
        stage=STAGE,
        image_list_digest=index.digest,
        params=settings.params(),
        arrays={"boxes": boxes},
        attrs={
            "shard": shard,
            "shards": shards,
            "start": start,
            "stop": stop,
            "failed": failed,
            "guarded": guarded,
            "opencv_version": _opencv_version(),
            "seconds": round(time.monotonic() - t0, 3),
            "threads": threads,
        },
    )


def run(args: argparse.Namespace) -> None:
    """Run one shard and report."""
    settings = settings_from_args(args)
    path = run_shard(args.index, args.shard, args.shards, settings, args.threads, args.out)
    print(f"wrote proposals shard {args.shard}/{args.shards} ({settings.backend}) -> {path}")
