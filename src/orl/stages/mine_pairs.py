"""Stage `orl mine-pairs`: the top RoI pairs of every (query, neighbour) for one shard of queries (ORL_SPEC §2d).

Reads the query's and its neighbours' embeddings from whichever roi-embed parts hold them (lazily, with a cache),
so changing the ratio reruns only this stage and the gather, never the embedding.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np

from orl.artifacts import ArtifactError, Csr, check_no_self_neighbors, open_artifact, write_artifact
from orl.data.image_index import load_index, shard_range
from orl.mining.correspondence import PAIR_WIDTH, PAIRS_STAGE, EmbeddingStore, array_digest, mine_range

STAGE = PAIRS_STAGE
KNN_STAGE = "knn"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `orl mine-pairs`."""
    parser.add_argument("--index", required=True, type=Path, help="image index artifact (images.h5)")
    parser.add_argument("--knn", required=True, type=Path, help="kNN artifact (knn.h5)")
    parser.add_argument("--embeddings", required=True, nargs="+", type=Path, help="every part from `orl roi-embed`")
    parser.add_argument("--shard", type=int, default=0, help="which shard of queries to process (0-based)")
    parser.add_argument("--shards", type=int, default=1, help="total number of shards")
    parser.add_argument("--ratio", type=float, default=0.1, help="T = max(1, int(ratio * B_q)) pairs per neighbour")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads")
    parser.add_argument("--cache-gb", type=float, default=2.0, help="memory for recently used embedding rows")
    parser.add_argument("--out", required=True, type=Path, help="part artifact to write (.h5)")


def read_neighbors(knn_path: str | Path, index_path: str | Path, n: int) -> tuple[np.ndarray, str]:
    """The (N, K) kNN indices (refusing another image list or a malformed file) and the kNN params digest."""
    with open_artifact(knn_path, stage=KNN_STAGE, like=index_path) as art:
        idx = art.array("indices").astype(np.int64)
        digest = str(art.attrs["params_digest"])
    if idx.ndim != 2 or idx.shape[0] != n or idx.shape[1] < 1:
        raise ArtifactError(f"{knn_path} holds neighbours of shape {idx.shape} but {index_path} lists {n} images")
    if idx.min() < 0 or idx.max() >= n:
        raise ArtifactError(f"{knn_path}: neighbour indices outside [0, {n})")
    check_no_self_neighbors(knn_path, idx)
    return idx, digest


def run_shard(
    index_path: Path,
    knn_path: Path,
    embeddings: list[Path],
    shard: int,
    shards: int,
    ratio: float,
    out: Path,
    cache_bytes: int = 2 << 30,
) -> Path:
    """Mine the pairs of the shard's queries and write the part artifact."""
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    t0 = time.monotonic()
    index = load_index(index_path)
    n = len(index)
    neighbors, knn_digest = read_neighbors(knn_path, index_path, n)
    k = neighbors.shape[1]
    start, stop = shard_range(n, shards, shard)
    with EmbeddingStore(embeddings, index_path, n, cache_bytes) as store:
        boxes, scores, ids = mine_range(store, neighbors, start, stop, ratio)
        stats = {"cache_hits": store.hits, "cache_misses": store.misses, "rows_read": store.rows_read}
        emb_digest, emb_params = store.params_digest, store.params
    print(f"mine-pairs {shard}/{shards}: {stop - start} queries x {k} neighbours, {stats}", file=sys.stderr)
    return write_artifact(
        out,
        stage=STAGE,
        image_list_digest=index.digest,
        params={"ratio": ratio, "k": k, "embeddings_params_digest": emb_digest,
                "neighbors_digest": array_digest(neighbors)},
        arrays={
            "pairs": Csr.from_rows(boxes, row_shape=(PAIR_WIDTH,), dtype=np.int32),
            "pair_scores": Csr.from_rows(scores, dtype=np.float32),
            "pair_box_ids": Csr.from_rows(ids, row_shape=(2,), dtype=np.int32),
        },
        attrs={
            "start": start,
            "stop": stop,
            "shard": shard,
            "shards": shards,
            "ratio": ratio,
            "k": k,
            "knn": str(knn_path),
            "knn_params_digest": knn_digest,
            "embeddings": [str(p) for p in embeddings],
            "embeddings_params": emb_params,
            "seconds": round(time.monotonic() - t0, 3),
            **stats,
        },
    )


def run(args: argparse.Namespace) -> None:
    """Run one shard and report."""
    limits = contextlib.nullcontext()
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(limits=max(1, args.threads))
    with limits:
        path = run_shard(
            args.index, args.knn, args.embeddings, args.shard, args.shards, args.ratio, args.out,
            int(args.cache_gb * (1 << 30)),
        )
    print(f"mined pairs of shard {args.shard}/{args.shards} (ratio {args.ratio}) -> {path}")
