"""Stage `orl roi-embed`: filter one shard's proposals (§2d) and embed every kept box once (ORL_SPEC §2d).

Writes a part with CSR "boxes" (kept boxes, int32 xywh, filter order) and CSR "embeddings" (unit RoI embeddings,
float16 by default to halve the size: COCO is ~118k x 55 x 2048 values, ~27 GB in float16), attrs start/stop/
shard/shards/mode. `orl mine-pairs` reads these rows lazily; `orl gather-correspondence` joins the boxes.
"""

from __future__ import annotations

import argparse
from orl.bench.weights import sha256_file
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported lazily, only when the stage runs
    from orl.mining.roi_embed import FilterSettings, RoiSettings

STAGE = "roi_embeddings_part"
PROPOSALS_STAGE = "proposals"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `orl roi-embed`."""
    from orl.mining.roi_embed import MODES, PRECISIONS, STORE_DTYPES, FilterSettings, RoiSettings

    d, f = RoiSettings(), FilterSettings()
    parser.add_argument("--model", required=True, type=Path, help="stage-1 model (results/pretrain/byol/model.pt)")
    parser.add_argument("--index", required=True, type=Path, help="image index artifact (images.h5)")
    parser.add_argument("--proposals", required=True, type=Path, help="gathered proposals artifact (proposals.h5)")
    parser.add_argument("--shard", type=int, default=0, help="which shard to process (0-based)")
    parser.add_argument("--shards", type=int, default=1, help="total number of shards")
    parser.add_argument("--mode", choices=MODES, default=d.mode, help="crop = the paper's; roi_align = fast variant")
    parser.add_argument("--crop-size", type=int, default=d.crop_size, help="crop mode: resized crop side (paper 224)")
    parser.add_argument("--image-size", type=int, default=d.image_size, help="roi_align mode: image short side")
    parser.add_argument("--output-size", type=int, default=d.output_size, help="roi_align mode: pooled grid side")
    parser.add_argument("--min-size", type=float, default=f.min_size, help="box filter: min width and height (px)")
    parser.add_argument("--max-aspect", type=float, default=f.max_aspect, help="box filter: max aspect ratio")
    parser.add_argument("--iou", type=float, default=f.iou, help="box filter: max IoU with an already kept box")
    parser.add_argument("--max-boxes", type=int, default=f.max_boxes, help="box filter: max kept boxes per image")
    parser.add_argument("--dtype", choices=sorted(STORE_DTYPES), default=d.dtype, help="storage dtype of embeddings")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default=d.precision, help="autocast dtype on GPU")
    parser.add_argument("--batch-size", type=int, default=256, help="crops per forward pass (crop mode)")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader processes decoding and cropping images")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads in the main process")
    parser.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:N")
    parser.add_argument("--out", required=True, type=Path, help="part artifact to write (.h5)")


def run_shard(
    model: Path,
    index_path: Path,
    proposals_path: Path,
    shard: int,
    shards: int,
    settings: RoiSettings,
    filt: FilterSettings,
    out: Path,
    *,
    batch_size: int = 256,
    workers: int = 0,
    device: str = "auto",
) -> Path:
    """Filter and embed the kept boxes of one shard; write the part artifact."""
    import numpy as np

    from orl.artifacts import Csr, open_artifact, write_artifact
    from orl.data.image_index import load_index, shard_range
    from orl.mining.features import resolve_device
    from orl.mining.roi_embed import (
        FALLBACK_FIRST, FALLBACK_WHOLE, STORE_DTYPES, RoiEmbedder, embed_kept, image_tasks, shard_kept_boxes,
    )
    from orl.methods.pretrained import load_pretrained

    t0 = time.monotonic()
    index = load_index(index_path)
    start, stop = shard_range(len(index), shards, shard)
    if not Path(model).is_file():
        raise FileNotFoundError(f"model {model} does not exist; run the pretraining stage first")
    with open_artifact(proposals_path, stage=PROPOSALS_STAGE, like=index_path) as props:
        if props.dataset("boxes/offsets").shape[0] != len(index) + 1:
            raise ValueError(f"{proposals_path} holds boxes of {props.dataset('boxes/offsets').shape[0] - 1} images "
                             f"but {index_path} lists {len(index)}")
        kept, fallbacks = shard_kept_boxes(props, start, stop, index.widths, index.heights, filt)
        proposals_digest = str(props.attrs["params_digest"])
    method = load_pretrained(model, map_location="cpu")
    backbone = method.online_backbone() if hasattr(method, "online_backbone") else method.backbone
    dev = resolve_device(device)
    embedder = RoiEmbedder(backbone, dev, batch_size=batch_size, precision=settings.precision)
    counts = np.array([len(k) for k in kept], dtype=np.int64)
    values = np.empty((int(counts.sum()), backbone.out_dim), dtype=STORE_DTYPES[settings.dtype])
    paths = [index.path(i) for i in range(start, stop)]
    tasks = image_tasks(paths, index.widths[start:stop], index.heights[start:stop])
    embed_kept(embedder, tasks, kept, settings, values, workers=workers, label=f"roi-embed {shard}/{shards}")
    offsets = np.zeros(len(kept) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    boxes = Csr(np.concatenate(kept).astype(np.int32).reshape(-1, 4) if kept else np.zeros((0, 4), np.int32), offsets)
    model_sha = sha256_file(model)
    first = [start + i for i, fb in enumerate(fallbacks) if fb == FALLBACK_FIRST]
    whole = [start + i for i, fb in enumerate(fallbacks) if fb == FALLBACK_WHOLE]
    return write_artifact(
        out,
        stage=STAGE,
        image_list_digest=index.digest,
        # What determines the numbers (device, batch size and workers do not).
        params={**settings.params(), "filter": filt.params(), "model_sha256": model_sha,
                "proposals_params_digest": proposals_digest},
        arrays={"boxes": boxes, "embeddings": Csr(values, offsets)},
        attrs={
            "start": start,
            "stop": stop,
            "shard": shard,
            "shards": shards,
            "mode": settings.mode,
            "dtype": settings.dtype,
            "model": str(model),
            "model_sha256": model_sha,
            "proposals": str(proposals_path),
            "proposals_params_digest": proposals_digest,
            "fallback_first_box": first,
            "fallback_whole_image": whole,
            "num_boxes": int(counts.sum()),
            "crop_forwards": embedder.crop_forwards,
            "padded_forwards": embedder.padded_forwards,
            "image_forwards": embedder.image_forwards,
            "batch_size": batch_size,
            "device": str(dev),
            "seconds": round(time.monotonic() - t0, 3),
        },
    )


def run(args: argparse.Namespace) -> None:
    """Run one shard and report."""
    import torch

    from orl.mining.roi_embed import FilterSettings, RoiSettings
    from orl.runtime import check_gpus

    check_gpus(device=args.device)
    torch.set_num_threads(max(1, args.threads))
    settings = RoiSettings(
        mode=args.mode, crop_size=args.crop_size, image_size=args.image_size, output_size=args.output_size,
        dtype=args.dtype, precision=args.precision,
    )
    filt = FilterSettings(min_size=args.min_size, max_aspect=args.max_aspect, iou=args.iou, max_boxes=args.max_boxes)
    path = run_shard(
        args.model, args.index, args.proposals, args.shard, args.shards, settings, filt, args.out,
        batch_size=args.batch_size, workers=args.workers, device=args.device,
    )
    from orl.artifacts import read_attrs

    a = read_attrs(path)
    n = a["stop"] - a["start"]
    print(
        f"roi-embed shard {args.shard}/{args.shards} ({args.mode}): {n} images, {a['num_boxes']} kept boxes "
        f"({a['num_boxes'] / max(n, 1):.1f}/image), {len(a['fallback_first_box'])} fallback box(es) "
        f"in {a['seconds']:.1f} s -> {path}"
    )
