"""Correspondence pairs (ORL_SPEC §2d): for image q and neighbour k, the top T entries of the flattened
B_q x B_k cosine matrix of their kept-box embeddings, T = max(1, int(ratio * B_q)).

Similarities are computed in float64 from the stored embeddings (renormalised after float16 storage), and ties are
broken by the lower flattened index (query box first, then neighbour box), so the pairs are a pure function of
the stored embeddings: the same whatever the shard, cache state or machine thread count.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from orl.artifacts import Artifact, ArtifactError, open_artifact
from orl.mining.parts import PartInfo, check_parts, read_part

EMBEDDINGS_STAGE = "roi_embeddings_part"
PAIRS_STAGE = "pairs_part"
PAIR_WIDTH = 8  # (x_q, y_q, w_q, h_q, x_k, y_k, w_k, h_k)


def num_pairs(num_query_boxes: int, ratio: float) -> int:
    """T = max(1, int(ratio * B_q)), the authors' expression exactly (float product, truncation)."""
    return max(1, int(ratio * num_query_boxes))


def top_pairs(sim: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
    """The top t entries of the flattened matrix, highest first, ties by lower flat index: ((t, 2) ids, (t,) sims)."""
    sim = np.asarray(sim)
    flat = sim.ravel()
    n = flat.size
    t = min(int(t), n)
    if t <= 0:
        return np.zeros((0, 2), dtype=np.int32), np.zeros(0, dtype=flat.dtype)
    if t < n:
        # Only the entries >= the t-th largest can be selected; they include every tie at the boundary.
        thr = np.partition(flat, n - t)[n - t]
        cand = np.flatnonzero(flat >= thr)
    else:
        cand = np.arange(n)
    order = cand[np.argsort(-flat[cand], kind="stable")[:t]]  # cand is ascending: stable = ties by lower index
    ids = np.stack(np.divmod(order, sim.shape[1]), axis=1).astype(np.int32)
    return ids, flat[order]


def _unit64(emb: np.ndarray) -> np.ndarray:
    x = np.asarray(emb, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError("RoI embeddings hold NaN or inf; the stage-1 model is broken")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def mine_query(
    emb_q: np.ndarray, emb_neighbors: Sequence[np.ndarray], ratio: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per neighbour of query q: ((T, 2) int32 box ids, (T,) float32 cosines), T = num_pairs(B_q, ratio)."""
    q = _unit64(emb_q)
    t = num_pairs(len(q), ratio)
    if not emb_neighbors:
        return []
    ks = [_unit64(e) for e in emb_neighbors]
    sims = q @ np.concatenate(ks).T  # one GEMM for all K neighbours of the query
    bounds = np.cumsum([0] + [len(k) for k in ks])
    out = []
    for j in range(len(ks)):
        ids, s = top_pairs(sims[:, bounds[j] : bounds[j + 1]], t)
        out.append((ids, s.astype(np.float32)))
    return out


def pair_boxes(boxes_q: np.ndarray, boxes_k: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(T, 8) int32 rows (x_q, y_q, w_q, h_q, x_k, y_k, w_k, h_k) for box-id pairs."""
    return np.concatenate([boxes_q[ids[:, 0]], boxes_k[ids[:, 1]]], axis=1).astype(np.int32)


def array_digest(a: np.ndarray) -> str:
    """Short sha256 of an array's dtype, shape and bytes (ties pairs to the exact neighbour lists used)."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


def check_embedding_parts(
    paths: Sequence[str | os.PathLike], index_path: str | os.PathLike, n: int
) -> list[PartInfo]:
    """The roi-embed parts, sorted, after checking image list, equal settings and exact coverage of [0, n)."""
    infos = [read_part(p, EMBEDDINGS_STAGE, index_path, "embeddings") for p in paths]
    return check_parts(infos, n, index_path, "roi-embed")


class EmbeddingStore:
    """Lazy, cached per-image access to the kept boxes and embeddings of all roi-embed parts.

    Rows are read on demand (the parts are far too big to load). A miss reads every image whose rows lie in the
    same compressed HDF5 chunk(s) as the one asked for (they are decompressed anyway), and recently used images
    stay in an LRU cache of `cache_bytes`.
    """

    def __init__(
        self, paths: Sequence[str | os.PathLike], index_path: str | os.PathLike, n: int, cache_bytes: int = 1 << 30
    ) -> None:
        self.parts = check_embedding_parts(paths, index_path, n)
        self._arts: list[Artifact] = []
        self._offsets: list[np.ndarray] = []
        try:
            for part in self.parts:
                art = open_artifact(part.path, stage=EMBEDDINGS_STAGE, like=index_path)
                self._arts.append(art)
                emb_off = art.dataset("embeddings/offsets")[()]
                if not np.array_equal(emb_off, art.dataset("boxes/offsets")[()]):
                    raise ArtifactError(f"{part.path}: boxes and embeddings have different row lengths")
                self._offsets.append(emb_off)
        except BaseException:
            self.close()
            raise
        self._starts = np.array([p.start for p in self.parts], dtype=np.int64)
        self.cache_bytes = int(cache_bytes)
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cached = 0
        self.hits = 0
        self.misses = 0
        self.rows_read = 0

    @property
    def params(self) -> dict:
        """The (common) settings of the parts."""
        return self.parts[0].params

    @property
    def params_digest(self) -> str:
        """The (common) params digest of the parts."""
        return self.parts[0].params_digest

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(kept boxes (B, 4) int32, embeddings (B, D) in the stored dtype) of image i."""
        hit = self._cache.get(i)
        if hit is not None:
            self._cache.move_to_end(i)
            self.hits += 1
            return hit
        self.misses += 1
        p = int(np.searchsorted(self._starts, i, side="right")) - 1
        part, art, off = self.parts[p], self._arts[p], self._offsets[p]
        local = i - part.start
        if not 0 <= local < part.stop - part.start:
            raise IndexError(f"image {i} is in no roi-embed part")
        values = art.dataset("embeddings/values")
        chunk = values.chunks[0] if values.chunks else max(1, values.shape[0])
        lo = int(off[local]) // chunk * chunk
        hi = min(-(-int(off[local + 1]) // chunk) * chunk, int(off[-1]))
        a = int(np.searchsorted(off, lo, side="left"))  # first image starting at or after lo
        b = int(np.searchsorted(off, hi, side="right")) - 1  # images [a, b) end at or before hi
        a, b = min(a, local), max(b, local + 1)
        emb = values[off[a] : off[b]]
        boxes = art.dataset("boxes/values")[off[a] : off[b]].reshape(-1, 4)
        self.rows_read += len(emb)
        result = None
        for j in range(a, b):
            r0, r1 = int(off[j] - off[a]), int(off[j + 1] - off[a])
            item = (boxes[r0:r1], emb[r0:r1])
            self._put(part.start + j, item)
            if j == local:
                result = item
        assert result is not None
        self._cache.move_to_end(i)
        return result

    def _put(self, i: int, item: tuple[np.ndarray, np.ndarray]) -> None:
        if i in self._cache:
            return
        self._cache[i] = item
        self._cached += item[0].nbytes + item[1].nbytes
        while self._cached > self.cache_bytes and len(self._cache) > 1:
            _, (bx, em) = self._cache.popitem(last=False)
            self._cached -= bx.nbytes + em.nbytes

    def close(self) -> None:
        """Close every part."""
        for art in self._arts:
            art.close()
        self._arts = []

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def mine_range(
    store: EmbeddingStore, neighbors: np.ndarray, start: int, stop: int, ratio: float
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Pairs of queries [start, stop): per (q, j) row, (T, 8) boxes, (T,) scores, (T, 2) box ids."""
    boxes_rows, score_rows, id_rows = [], [], []
    for q in range(start, stop):
        boxes_q, emb_q = store.get(q)
        # Evicting a cache entry only drops the cache's reference: arrays already returned stay valid.
        nbrs = [store.get(int(k)) for k in neighbors[q]]
        for (ids, scores), (boxes_k, _) in zip(mine_query(emb_q, [e for _, e in nbrs], ratio), nbrs):
            boxes_rows.append(pair_boxes(boxes_q, boxes_k, ids))
            score_rows.append(scores)
            id_rows.append(ids)
    return boxes_rows, score_rows, id_rows

