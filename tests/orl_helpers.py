"""Shared helpers of the ORL tests: a hand-made correspondence artifact for a tiny image index, tiny ORL settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from orl.artifacts import Csr, write_artifact
from orl.data.image_index import ImageIndex

TINY_ORL_ARGS: dict[str, Any] = {"arch": "resnet18", "proj_hidden": 64, "proj_dim": 32, "pred_hidden": 64}


def make_correspondence(index: ImageIndex, path: Path, k: int = 2, seed: int = 0, digest: str | None = None) -> Path:
    """A valid stage-2 artifact: 1-3 random kept boxes per image, neighbours i+1..i+k, 1-3 pairs per (q, k).

    Every box in the whole artifact is distinct, so a pair identifies the (query, neighbour) row it came from.
    """
    rng = np.random.default_rng(seed)
    n = len(index)
    boxes: list[np.ndarray] = []
    seen: set[tuple[int, ...]] = set()
    for i in range(n):
        w, h = int(index.widths[i]), int(index.heights[i])
        rows: list[list[int]] = []
        while len(rows) < int(rng.integers(1, 4)):
            bw, bh = int(rng.integers(8, w // 2 + 1)), int(rng.integers(8, h // 2 + 1))
            box = (int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1)), bw, bh)
            if box not in seen:
                seen.add(box)
                rows.append(list(box))
        boxes.append(np.array(rows, dtype=np.int32))
    neighbors = np.array([[(i + 1 + j) % n for j in range(k)] for i in range(n)], dtype=np.int64)
    pairs, ids, scores = [], [], []
    for q in range(n):
        for j in range(k):
            nb = int(neighbors[q, j])
            t = int(rng.integers(1, 4))
            a, b = rng.integers(0, len(boxes[q]), t), rng.integers(0, len(boxes[nb]), t)
            pairs.append(np.concatenate([boxes[q][a], boxes[nb][b]], axis=1))
            ids.append(np.stack([a, b], axis=1).astype(np.int32))
            scores.append(np.sort(rng.random(t).astype(np.float32))[::-1])
    return write_artifact(
        path,
        stage="correspondence",
        image_list_digest=digest or index.digest,
        params={"hand_made": True, "seed": seed, "k": k},
        arrays={
            "boxes": Csr.from_rows(boxes, (4,), np.int32),
            "neighbors": neighbors,
            "pairs": Csr.from_rows(pairs, (8,), np.int32),
            "pair_scores": Csr.from_rows(scores, (), np.float32),
            "pair_box_ids": Csr.from_rows(ids, (2,), np.int32),
        },
        attrs={"k": k},
    )
