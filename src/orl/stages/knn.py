"""Stage `orl knn`: exact cosine K nearest neighbours of every image in the feature bank (ORL_SPEC 2b)."""

from __future__ import annotations

import argparse
from pathlib import Path

STAGE = "knn"
FEATURES_STAGE = "features"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `orl knn`."""
    from orl.mining.knn import ROUTES

    parser.add_argument("--features", required=True, type=Path, help="feature bank artifact (orl features)")
    parser.add_argument("--index", required=True, type=Path, help="image index artifact the features must match")
    parser.add_argument("--out", required=True, type=Path, help="kNN artifact to write (.h5)")
    parser.add_argument("--k", type=int, default=10, help="neighbours per image, self excluded")
    parser.add_argument("--route", choices=ROUTES, default="auto", help="search backend (all give the same result)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch / faiss / BLAS")
    parser.add_argument("--memory-gb", type=float, default=1.0, help="memory for one chunk of the similarity matrix")
    parser.add_argument("--chunk-size", type=int, default=None, help="query rows per chunk (default: from --memory-gb)")


def run(args: argparse.Namespace) -> None:
    """Read the feature bank (refusing one made from another image list), search, write indices + similarities."""
    from orl.artifacts import ArtifactError, open_artifact, write_artifact
    from orl.mining.knn import chunk_rows, knn, resolve_route, set_threads

    set_threads(args.threads)
    with open_artifact(args.index, stage="image_index") as index:
        num_images = index.dataset("ids").shape[0]
        digest = index.image_list_digest
    with open_artifact(args.features, stage=FEATURES_STAGE, like=args.index) as art:
        features = art.array("features")
        features_params = art.attrs.get("params_digest", "")
    if features.ndim != 2 or features.shape[0] != num_images:
        raise ArtifactError(
            f"{args.features} holds features of shape {features.shape} but {args.index} lists {num_images} images"
        )
    route = resolve_route(args.route, args.k)
    memory = int(args.memory_gb * (1 << 30))
    chunk = args.chunk_size or chunk_rows(num_images, memory, route)
    indices, sims = knn(features, args.k, route=route, chunk_size=chunk, progress=True)
    write_artifact(
        args.out,
        stage=STAGE,
        image_list_digest=digest,
        params={"k": args.k},  # the route changes speed, not the result
        arrays={"indices": indices, "similarities": sims},
        attrs={
            "route": route,
            "k": args.k,
            "chunk_size": chunk,
            "features": str(args.features),
            "features_params_digest": features_params,
        },
    )
    print(f"kNN k={args.k} of {num_images} images via {route} -> {args.out}")
