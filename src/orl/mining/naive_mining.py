"""The authors' correspondence mining, as a reference: every query re-embeds its own and its K neighbours' crops.

Not used by the pipeline (orl roi-embed + mine-pairs embeds each image once, ~K+1 times fewer forwards); kept to
check that caching changes nothing (tests) and to measure what it saves (benchmarks/speed/mining_speed.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from orl.data.images import open_rgb
from orl.mining.correspondence import mine_query, pair_boxes
from orl.mining.roi_embed import STORE_DTYPES, RoiEmbedder, crop_rois


def naive_mine(
    embedder: RoiEmbedder,
    images: Sequence[tuple[str, int, int]],
    kept: Sequence[np.ndarray],
    neighbors: np.ndarray,
    ratio: float,
    crop_size: int,
    queries: Sequence[int] | None = None,
    dtype: str = "float16",
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Per (q, j) row of the given queries: (T, 8) pair boxes, (T,) scores, (T, 2) box ids, re-embedding per query.

    Embeddings are rounded to the storage `dtype` before matching, like the cached pipeline, so the two can be
    compared exactly; dtype="float32" is the authors' setting.
    """

    def embed(i: int) -> np.ndarray:
        # Decode, crop and forward again on every use: the authors' per-query data loader does exactly this.
        crops = crop_rois(open_rgb(images[i][0]), kept[i], crop_size)
        return embedder.embed_crops(torch.from_numpy(crops)).astype(STORE_DTYPES[dtype])

    boxes_rows, score_rows, id_rows = [], [], []
    for q in range(len(images)) if queries is None else queries:
        emb_q = embed(q)
        nbrs = [int(k) for k in neighbors[q]]
        for (ids, scores), k in zip(mine_query(emb_q, [embed(k) for k in nbrs], ratio), nbrs):
            boxes_rows.append(pair_boxes(kept[q], kept[k], ids))
            score_rows.append(scores)
            id_rows.append(ids)
    return boxes_rows, score_rows, id_rows
