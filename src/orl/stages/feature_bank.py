"""Stage `orl features`: embed every indexed image with the stage-1 model into the feature bank (ORL_SPEC 2a)."""

from __future__ import annotations

import argparse
from orl.bench.weights import sha256_file
from pathlib import Path

STAGE = "features"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `orl features`."""
    parser.add_argument("--model", required=True, type=Path, help="stage-1 model (results/pretrain/<method>/model.pt)")
    parser.add_argument("--index", required=True, type=Path, help="image index artifact (.h5)")
    parser.add_argument("--out", required=True, type=Path, help="feature bank artifact to write (.h5)")
    parser.add_argument("--resize", type=int, default=256, help="resize the short side to this many pixels")
    parser.add_argument("--crop", type=int, default=224, help="then centre-crop a square of this side")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader worker processes decoding images")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads in the main process")
    parser.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:N")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="autocast dtype on GPU (CPU: fp32)"
    )


def run(args: argparse.Namespace) -> None:
    """Load the model and the index, embed every image, write the feature bank."""
    import torch

    from orl.artifacts import write_artifact
    from orl.data.image_index import load_index
    from orl.mining.features import compute_features, resolve_device
    from orl.methods.pretrained import load_pretrained
    from orl.runtime import check_gpus

    check_gpus(device=args.device)
    torch.set_num_threads(max(1, args.threads))
    if not args.model.is_file():
        raise FileNotFoundError(f"model {args.model} does not exist; run the pretraining stage first")
    index = load_index(args.index)
    model = load_pretrained(args.model, map_location="cpu")
    device = resolve_device(args.device)
    features = compute_features(
        model,
        index,
        resize=args.resize,
        crop=args.crop,
        batch_size=args.batch_size,
        workers=args.workers,
        device=device,
        precision=args.precision,
        progress=True,
    )
    write_artifact(
        args.out,
        stage=STAGE,
        image_list_digest=index.digest,
        # What determines the numbers; batch size, workers and device do not (up to float rounding).
        params={"resize": args.resize, "crop": args.crop, "precision": args.precision},
        arrays={"features": features},
        attrs={
            "model": str(args.model),
            "model_sha256": sha256_file(args.model),
            "index": str(args.index),
            "device": str(device),
            "num_images": features.shape[0],
            "dim": features.shape[1],
        },
    )
    print(f"embedded {features.shape[0]} images -> {features.shape[1]}-d features on {device} -> {args.out}")
