"""Stage `orl gather-correspondence`: join the roi-embed and mine-pairs parts into mining/correspondence.h5.

The artifact is the contract for stage 3 (N images, K neighbours):
- "boxes": Csr, row i = kept boxes of image i, int32 (B_i, 4) xywh, in filter order;
- "neighbors": (N, K) int64, the kNN indices the pairs were mined with;
- "pairs": Csr with N*K rows, row q*K + j = pairs of query q with its j-th neighbour, int32 (T, 8) =
  (x_q, y_q, w_q, h_q, x_k, y_k, w_k, h_k), highest similarity first;
- "pair_scores": same offsets, float32 (T,) cosine similarities;
- "pair_box_ids": same offsets, int32 (T, 2) = (index into boxes[q], index into boxes[k]);
- attrs: mode, ratio, filter, k, provenance (knn / proposals / model files and digests), fallback counts.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from orl.artifacts import ArtifactError, Csr, open_artifact, write_artifact
from orl.data.image_index import load_index
from orl.mining.correspondence import PAIRS_STAGE, EMBEDDINGS_STAGE, array_digest, check_embedding_parts
from orl.mining.parts import PartInfo, check_parts, read_part
from orl.stages.mine_pairs import read_neighbors

STAGE = "correspondence"
PROPOSALS_STAGE = "proposals"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `orl gather-correspondence`."""
    parser.add_argument("--index", required=True, type=Path, help="image index artifact (images.h5)")
    parser.add_argument("--knn", required=True, type=Path, help="kNN artifact the pairs were mined with")
    parser.add_argument("--proposals", required=True, type=Path, help="proposals artifact the boxes were filtered from")
    parser.add_argument("--embeddings", required=True, nargs="+", type=Path, help="every part from `orl roi-embed`")
    parser.add_argument("--pairs", required=True, nargs="+", type=Path, help="every part from `orl mine-pairs`")
    parser.add_argument("--out", required=True, type=Path, help="artifact to write (mining/correspondence.h5)")
    parser.add_argument(
        "--quality", type=Path, default=None, help="also write pair-quality figures to this JSON (COCO-annotated index)"
    )
    parser.add_argument("--quality-seed", type=int, default=0, help="seed of the random-pair baseline")


def _concat(parts: Sequence[PartInfo], stage: str, index_path: str | os.PathLike, name: str) -> Csr:
    blocks = []
    for part in parts:
        with open_artifact(part.path, stage=stage, like=index_path) as art:
            blocks.append(art.csr(name))
    return Csr.concatenate(blocks)


def check_pairs(boxes: Csr, neighbors: np.ndarray, pairs: Csr, ids: Csr, scores: Csr, ratio: float) -> None:
    """Refuse pairs that do not index these boxes, break the T rule, or disagree with the box coordinates."""
    n, k = neighbors.shape
    if not (len(pairs) == len(ids) == len(scores) == n * k):
        raise ArtifactError(f"pairs have {len(pairs)} rows, expected N*K = {n * k}")
    if not (np.array_equal(pairs.offsets, ids.offsets) and np.array_equal(pairs.offsets, scores.offsets)):
        raise ArtifactError("pairs, pair_box_ids and pair_scores have different row lengths")
    lens = ids.lengths()
    rows = np.repeat(np.arange(n * k), lens)
    q, nb = rows // k, neighbors.ravel()[rows]
    bl = boxes.lengths()
    bq = bl[np.arange(n * k) // k]
    t = np.maximum(1, (ratio * bq).astype(np.int64))  # float64 product then truncation, as int(ratio * B_q)
    if not np.array_equal(lens, np.minimum(t, bq * bl[neighbors.ravel()])):
        raise ArtifactError(f"pair counts do not follow T = max(1, int({ratio} * B_q))")
    iv = ids.values.reshape(-1, 2).astype(np.int64)
    if len(iv) and (iv.min() < 0 or (iv[:, 0] >= bl[q]).any() or (iv[:, 1] >= bl[nb]).any()):
        raise ArtifactError("pair box ids point outside the kept boxes: the pairs were mined from other embeddings")
    expect = np.concatenate([boxes.values[boxes.offsets[q] + iv[:, 0]], boxes.values[boxes.offsets[nb] + iv[:, 1]]], 1)
    if not np.array_equal(expect.reshape(-1, 8), pairs.values.reshape(-1, 8)):
        raise ArtifactError("pair coordinates disagree with the kept boxes: the pairs were mined from other boxes")


def gather(
    index_path: Path,
    knn_path: Path,
    proposals_path: Path,
    embeddings: Sequence[Path],
    pairs: Sequence[Path],
    out: Path,
    quality: Path | None = None,
    quality_seed: int = 0,
) -> tuple[Path, Path | None]:
    """Check every part against the index and each other, join them, write the artifact (+ quality JSON)."""
    index = load_index(index_path)
    if quality is not None and index.annotations is None:
        raise ValueError(f"pair quality needs ground truth, but {index_path} was built without COCO annotations")
    n = len(index)
    neighbors, knn_digest = read_neighbors(knn_path, index_path, n)
    k = neighbors.shape[1]
    with open_artifact(proposals_path, stage=PROPOSALS_STAGE, like=index_path) as props:
        proposals_digest = str(props.attrs["params_digest"])
    emb_parts = check_embedding_parts(embeddings, index_path, n)
    emb = emb_parts[0]
    if emb.params.get("proposals_params_digest") != proposals_digest:
        raise ArtifactError(
            f"{emb.path} was filtered from proposals with params digest {emb.params.get('proposals_params_digest')} "
            f"but {proposals_path} has {proposals_digest}: rerun roi-embed on the current proposals"
        )
    pair_parts = check_parts(
        [read_part(p, PAIRS_STAGE, index_path, "pairs", rows_per_image=k) for p in pairs], n, index_path, "mine-pairs"
    )
    pp = pair_parts[0]
    if pp.params.get("embeddings_params_digest") != emb.params_digest:
        raise ArtifactError(
            f"{pp.path} was mined from embeddings {pp.params.get('embeddings_params_digest')} but {emb.path} has "
            f"{emb.params_digest}: rerun mine-pairs on the current roi-embed parts"
        )
    if pp.params.get("neighbors_digest") != array_digest(neighbors):
        raise ArtifactError(f"{pp.path} was mined with other neighbours than those in {knn_path}: rerun mine-pairs")
    ratio = float(pp.params["ratio"])

    boxes = _concat(emb_parts, EMBEDDINGS_STAGE, index_path, "boxes")
    pair_rows = _concat(pair_parts, PAIRS_STAGE, index_path, "pairs")
    scores = _concat(pair_parts, PAIRS_STAGE, index_path, "pair_scores")
    ids = _concat(pair_parts, PAIRS_STAGE, index_path, "pair_box_ids")
    check_pairs(boxes, neighbors, pair_rows, ids, scores, ratio)

    first = [i for p in emb_parts for i in p.attrs.get("fallback_first_box", [])]
    whole = [i for p in emb_parts for i in p.attrs.get("fallback_whole_image", [])]
    mode = emb.params["mode"]
    attrs = {
        "mode": mode,
        "ratio": ratio,
        "k": k,
        "filter": emb.params["filter"],
        "crop_size": emb.params.get("crop_size", 0),
        "image_size": emb.params.get("image_size", 0),
        "embedding_dtype": emb.params["dtype"],
        "knn": str(knn_path),
        "knn_params_digest": knn_digest,
        "neighbors_digest": array_digest(neighbors),
        "proposals": str(proposals_path),
        "proposals_params_digest": proposals_digest,
        "model": str(emb.attrs.get("model", "")),
        "model_sha256": emb.params["model_sha256"],
        "embeddings_params_digest": emb.params_digest,
        "num_images": n,
        "num_boxes": int(len(boxes.values)),
        "num_pairs": int(len(pair_rows.values)),
        "num_fallback_images": len(first) + len(whole),
        "fallback_first_box": first,
        "fallback_whole_image": whole,
        "embedding_parts": len(emb_parts),
        "pair_parts": len(pair_parts),
    }
    path = write_artifact(
        out,
        stage=STAGE,
        image_list_digest=index.digest,
        params={**emb.params, "ratio": ratio, "k": k, "neighbors_digest": array_digest(neighbors)},
        arrays={
            "boxes": Csr(boxes.values.reshape(-1, 4).astype(np.int32), boxes.offsets),
            "neighbors": neighbors,
            "pairs": Csr(pair_rows.values.reshape(-1, 8).astype(np.int32), pair_rows.offsets),
            "pair_scores": Csr(scores.values.astype(np.float32), scores.offsets),
            "pair_box_ids": Csr(ids.values.reshape(-1, 2).astype(np.int32), ids.offsets),
        },
        attrs=attrs,
    )
    qpath = None
    if quality is not None:
        from orl.mining.pair_quality import index_pair_quality

        report = index_pair_quality(boxes, neighbors, ids, index, seed=quality_seed)
        report.update(mode=mode, ratio=ratio, num_fallback_images=attrs["num_fallback_images"], artifact=str(path))
        qpath = Path(quality)
        qpath.parent.mkdir(parents=True, exist_ok=True)
        tmp = qpath.with_name(f".{qpath.name}.tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, qpath)  # atomic, like the artifacts
    return path, qpath


def run(args: argparse.Namespace) -> None:
    """Gather, write, and summarise."""
    path, qpath = gather(
        args.index, args.knn, args.proposals, args.embeddings, args.pairs, args.out, args.quality, args.quality_seed
    )
    from orl.artifacts import read_attrs

    a = read_attrs(path)
    print(
        f"correspondence ({a['mode']}, ratio {a['ratio']}): {a['num_images']} images, "
        f"{a['num_boxes'] / max(a['num_images'], 1):.1f} kept boxes/image, {a['num_pairs']} pairs, "
        f"{a['num_fallback_images']} fallback image(s) -> {path}"
    )
    if qpath is not None:
        q = json.loads(qpath.read_text())
        m, r = q["mined"], q["random"]
        print(
            f"pairs covering objects: mined {m['both_cover_object']:.3f} vs random {r['both_cover_object']:.3f}; "
            f"same category: mined {m['same_category']:.3f} vs random {r['same_category']:.3f} -> {qpath}"
        )
