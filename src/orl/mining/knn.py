"""Exact cosine k-nearest-neighbour retrieval over the feature bank (ORL_SPEC 2b).

Every route computes the same thing: for each query row, the K other rows with the highest inner product of
L2-normalised features, most similar first. The query's own row is excluded by INDEX, never by "drop the first
hit" (the authors' way), so an exact duplicate image keeps its twin as a neighbour. Ties are broken by the lower
image index, whatever order a backend returns them in, so the result is deterministic.

Queries are processed in chunks: the (chunk x N) similarity block is the only large temporary, and the chunk is
sized from a memory budget (COCO+, 241,690 x 256, runs in ~1 GiB besides the features themselves).
Each route (a float32 matmul + top-m) only proposes candidates: the top m = 2K+10 of every full row. A shared step
drops self, rescores the candidates that can be in the top K in float64, and orders by (similarity desc, index asc).
So indices and similarities are bit-identical whatever the route or chunk size (float32 GEMMs differ in the last
bits between backends and block shapes), and rows whose near-ties extend past the candidates are redone from the
full similarity row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np

ROUTES = ("auto", "faiss-gpu", "torch", "faiss-cpu", "numpy")
# Bytes allowed for the (chunk x N) float32 similarity block and its temporaries.
DEFAULT_MEMORY_BUDGET = 1 << 30
# Peak bytes per (query x base) block element, measured with benchmarks/speed/knn_routes.py (peak RSS): torch and faiss
# hold the float32 block (faiss tiles internally) plus the tie-resolution rows; numpy's argpartition adds a copy of
# the block and an int64 index array.
_BYTES_PER_ELEMENT = {"torch": 8, "faiss-cpu": 8, "faiss-gpu": 8, "numpy": 20}
# faiss GPU k-selection is limited to k <= 2048 (GPU_MAX_SELECTION_K).
_FAISS_GPU_MAX_K = 2048
# Exact CPU routes, fastest first, from benchmarks/speed/knn_routes.py on the project's 2-core AMD EPYC (2 threads, K=10;
# two runs on a shared, busy machine): 10k x 2048: torch 10.3 / 9.2 s, numpy 11.7 / 13.8 s, faiss-cpu 12.5 / 15.6 s;
# 10k x 256: torch 2.1 / 3.3 s, numpy 2.2 / 6.1 s, faiss-cpu 2.6 / 3.8 s; COCO+ 241,690 x 256 per 1,000 queries:
# torch 7.9 / 16.5 s, numpy 14.9 / 21.3 s, faiss-cpu 34.0 / 27.5 s. torch (MKL sgemm + topk) is fastest everywhere;
# faiss-cpu's bundled OpenBLAS 0.3.15 is the slowest at COCO+ scale.
_CPU_PREFERENCE = ("torch", "numpy", "faiss-cpu")

# A chunk's candidates: values (c, m) and indices (c, m) of the top m of each full row, plus a function that
# returns full similarity rows (len(rows), N) for chunk-local row numbers, used to resolve boundary ties.
_Chunk = tuple[int, int, np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _faiss_gpu_available() -> bool:
    faiss = _faiss()
    return faiss is not None and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _torch_cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def available_routes() -> list[str]:
    """Concrete routes usable on this machine (excluding "auto")."""
    routes = []
    if _faiss_gpu_available():
        routes.append("faiss-gpu")
    with contextlib.suppress(ImportError):
        import torch  # noqa: F401

        routes.append("torch")
    if _faiss() is not None:
        routes.append("faiss-cpu")
    routes.append("numpy")
    return routes


def resolve_route(route: str = "auto", k: int = 10) -> str:
    """Map "auto" to a concrete route (faiss-gpu, else torch on a GPU, else the fastest measured CPU route)."""
    if route not in ROUTES:
        raise ValueError(f"unknown kNN route {route!r}; choose from {', '.join(ROUTES)}")
    available = available_routes()
    if route != "auto":
        if route not in available:
            raise ValueError(f"kNN route {route!r} is not available here (available: {', '.join(available)})")
        if route == "faiss-gpu" and k + 2 > _FAISS_GPU_MAX_K:
            raise ValueError(f"faiss-gpu handles k <= {_FAISS_GPU_MAX_K - 2}; use route 'torch' for k={k}")
        return route
    if "faiss-gpu" in available and k + 2 <= _FAISS_GPU_MAX_K:
        return "faiss-gpu"
    if "torch" in available and _torch_cuda_available():
        return "torch"
    return next(r for r in _CPU_PREFERENCE if r in available)


def chunk_rows(n: int, memory_budget: int = DEFAULT_MEMORY_BUDGET, route: str = "torch") -> int:
    """Query rows per chunk so that the (rows x n) similarity block and its temporaries fit the memory budget."""
    per_element = _BYTES_PER_ELEMENT.get(route, max(_BYTES_PER_ELEMENT.values()))
    return int(max(1, min(n, memory_budget // (per_element * max(n, 1)))))


def normalize_rows(features: np.ndarray) -> np.ndarray:
    """L2-normalise rows to float32 (cosine = inner product); refuses non-finite values and zero rows."""
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"features must be a 2-d (N, D) array with D >= 1, got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise ValueError(f"features must be numeric, got dtype {x.dtype}")
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise ValueError(f"features hold NaN or inf in {len(bad)} row(s), e.g. rows {bad[:5].tolist()}")
    out = np.empty(x.shape, dtype=np.float32)
    # Row blocks keep the float64 temporaries small (COCO+ would otherwise need 0.5 GB per temporary).
    step = max(1, (1 << 22) // x.shape[1])
    for s in range(0, len(x), step):
        block = x[s : s + step].astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        if (norms == 0).any():
            bad = s + np.flatnonzero(norms == 0)
            raise ValueError(f"feature row(s) {bad[:5].tolist()} are all zero (cosine undefined)")
        out[s : s + step] = block / norms[:, None]
    return out


def _check_k(k: int, n: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if n < 2:
        raise ValueError(f"kNN needs at least 2 images (self is excluded), but the feature bank has {n}; "
                         "add images to the dataset")
    if k >= n:
        raise ValueError(
            f"k={k} neighbours need at least {k + 1} images (self is excluded), but the feature bank has {n}; "
            f"lower k below {n}"
        )


def _spans(start: int, stop: int, chunk: int) -> Iterator[tuple[int, int]]:
    for s in range(start, stop, chunk):
        yield s, min(s + chunk, stop)


def _numpy_chunks(x: np.ndarray, m: int, start: int, stop: int, chunk: int) -> Iterator[_Chunk]:
    for s, e in _spans(start, stop, chunk):
        block = x[s:e] @ x.T
        n = block.shape[1]
        # Partition on the block itself (largest m at the end) rather than on a negated copy: one temporary less.
        part = np.argpartition(block, n - m, axis=1)[:, n - m :] if m < n else np.tile(np.arange(n), (e - s, 1))
        yield s, e, np.take_along_axis(block, part, axis=1), part, lambda rows, b=block: b[rows]
        del block, part  # free before the next chunk's block is allocated (else two blocks coexist)


def _torch_chunks(x: np.ndarray, m: int, start: int, stop: int, chunk: int, device: str | None) -> Iterator[_Chunk]:
    import torch

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    base = torch.from_numpy(x).to(dev)
    # TF32 would cost ~1e-3 of precision: enough to reorder close neighbours. Keep full float32 matmuls.
    old_precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.inference_mode():
            for s, e in _spans(start, stop, chunk):
                block = base[s:e] @ base.T
                r = torch.arange(e - s, device=dev)
                # Self is masked here as well as in _finish so that topk spends no slot on it.
                block[r, r + s] = float("-inf")
                vals, idx = torch.topk(block, m, dim=1, largest=True, sorted=True)
                yield s, e, vals.cpu().numpy(), idx.cpu().numpy(), lambda rows, b=block: b[
                    torch.as_tensor(rows, device=dev)
                ].cpu().numpy()
                del block, vals, idx  # free before the next chunk's block is allocated
    finally:
        torch.set_float32_matmul_precision(old_precision)


def gpu_number(device: str | None) -> int:
    """The GPU number of a device string for faiss: "cuda:2" -> 2; None, "cuda" -> 0 (the first visible GPU)."""
    if device is None or device == "cuda":
        return 0
    kind, _, number = str(device).partition(":")
    if kind != "cuda" or not number.isdigit():
        raise ValueError(f"faiss-gpu needs a CUDA device such as cuda:0, got {device!r}")
    return int(number)


def _faiss_chunks(
    x: np.ndarray, m: int, start: int, stop: int, chunk: int, gpu: bool, device: str | None = None
) -> Iterator[_Chunk]:
    faiss = _faiss()
    d = x.shape[1]
    if gpu:
        res = faiss.StandardGpuResources()
        config = faiss.GpuIndexFlatConfig()
        config.device = gpu_number(device)
        config.useFloat16 = False  # exact float32 scores
        index = faiss.GpuIndexFlatIP(res, d, config)
    else:
        index = faiss.IndexFlatIP(d)
    index.add(x)
    for s, e in _spans(start, stop, chunk):
        q = np.ascontiguousarray(x[s:e])
        vals, idx = index.search(q, m)
        # Full rows for tie resolution are recomputed with numpy: same values up to rounding, ordered consistently.
        yield s, e, vals, idx, lambda rows, q=q: q[rows] @ x.T


def _dots(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x[a_i] . x[b_i] in float64: float32 x float32 products are exact in float64, so only the sum rounds (~1e-16).

    Each value depends only on its own two rows, never on the chunk or the backend that proposed the pair.
    """
    out = np.empty(len(a), dtype=np.float64)
    step = max(1, (1 << 21) // x.shape[1])  # ~16 MiB of float64 products per step
    for s in range(0, len(a), step):
        qa = x[a[s : s + step]].astype(np.float64)
        out[s : s + step] = (qa * x[b[s : s + step]]).sum(axis=1)
    return out


def _order(vals: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by value descending, then index ascending (two stable sorts)."""
    o = np.argsort(idx, axis=1, kind="stable")
    vals, idx = np.take_along_axis(vals, o, axis=1), np.take_along_axis(idx, o, axis=1)
    o = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(vals, o, axis=1), np.take_along_axis(idx, o, axis=1)


def _top_by_index(block: np.ndarray, rows: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Top c of full float32 rows (query ids `rows`, self excluded), ties at the c-th value by lowest index."""
    b = np.array(block, dtype=np.float32, copy=True)
    b[np.arange(len(rows)), rows] = -np.inf
    cth = -np.partition(-b, c - 1, axis=1)[:, c - 1 : c]
    above = b > cth
    tied = b == cth
    need = c - above.sum(axis=1, keepdims=True)
    keep = above | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= need))
    r, col = np.nonzero(keep)  # row-major: exactly c per row, columns ascending
    return b[r, col].reshape(len(rows), c), col.reshape(len(rows), c).astype(np.int64)


def _select(
    x: np.ndarray, rows: np.ndarray, vals: np.ndarray, idx: np.ndarray, k: int, whole_rows: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From each row's top-m float32 candidates, the exact top k: (indices, float64 sims, rows left unsure).

    Float32 scores of unit vectors are within tol = D * 2^-23 of the exact ones, so every true top-k element has
    a float32 score >= kth32 - 2 tol (the "band"). The band is rescored exactly and ordered by (similarity desc,
    index asc). A row is unsure when the band may extend past the candidates the route returned.
    """
    n, d = x.shape
    tol = d * 2.0**-23
    vals = np.asarray(vals, dtype=np.float32)
    idx = np.asarray(idx, dtype=np.int64)
    invalid = (idx == rows[:, None]) | (idx < 0)  # self (by index), or faiss padding (-1)
    vals = np.where(invalid, -np.inf, vals).astype(np.float32)
    idx = np.where(invalid, n, idx)  # sorts after every real index among equal (-inf) values
    vals, idx = _order(vals, idx)
    thr = vals[:, k - 1 : k].astype(np.float64) - 2 * tol
    # Elements the route did not return score <= the smallest valid candidate (self aside).
    smallest = np.where(np.isfinite(vals), vals, np.inf).min(axis=1)
    unsure = np.zeros(len(rows), dtype=bool) if whole_rows else smallest >= thr[:, 0]
    band = vals >= thr
    r, c = np.nonzero(band)
    exact = np.full(vals.shape, -np.inf)
    exact[r, c] = _dots(x, rows[r], idx[r, c])
    exact, idx = _order(exact, idx)
    return idx[:, :k], exact[:, :k], unsure


def _finish(x: np.ndarray, chunk: _Chunk, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top k of one chunk of queries; unsure rows are redone from their full similarity rows."""
    s, e, vals, idx, full_rows = chunk
    n = x.shape[0]
    rows = np.arange(s, e)
    out_idx, out_sim, unsure = _select(x, rows, vals, idx, k, whole_rows=np.shape(idx)[1] >= n)
    unsure = np.flatnonzero(unsure)
    # Near-tied scores around the K-th: widen to c candidates from the full row, chosen deterministically. Only more
    # than c images within ~D * 2^-22 of the K-th similarity (e.g. > c exact duplicates) could still be unsure.
    c = min(n - 1, max(256, 8 * k))
    step = max(1, (e - s) // 8)  # ~20 bytes of full-row temporaries per element: 1/8 of the chunk at a time
    for a in range(0, len(unsure), step):
        sub = unsure[a : a + step]
        wide_vals, wide_idx = _top_by_index(full_rows(sub), rows[sub], c)
        out_idx[sub], out_sim[sub], _ = _select(x, rows[sub], wide_vals, wide_idx, k, whole_rows=c >= n - 1)
    return out_idx, out_sim.astype(np.float32)


def knn(
    features: np.ndarray,
    k: int,
    route: str = "auto",
    chunk_size: int | None = None,
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    query_range: tuple[int, int] | None = None,
    device: str | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k of every row against all rows, self excluded by index: (indices int64, sims float32)."""
    x = normalize_rows(features)
    n = x.shape[0]
    _check_k(k, n)
    route = resolve_route(route, k)
    start, stop = (0, n) if query_range is None else query_range
    if not 0 <= start <= stop <= n:
        raise ValueError(f"query_range {query_range} is outside [0, {n}]")
    chunk = chunk_rows(n, memory_budget, route) if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    # Candidates per row: self may take one slot; the rest leave room for the band of near-ties around the K-th.
    m = min(2 * k + 10, n, _FAISS_GPU_MAX_K if route == "faiss-gpu" else n)
    if route == "numpy":
        chunks = _numpy_chunks(x, m, start, stop, chunk)
    elif route == "torch":
        chunks = _torch_chunks(x, m, start, stop, chunk, device)
    else:
        chunks = _faiss_chunks(x, m, start, stop, chunk, gpu=route == "faiss-gpu", device=device)
    indices = np.empty((stop - start, k), dtype=np.int64)
    sims = np.empty((stop - start, k), dtype=np.float32)
    # A bar updated by hand: wrapping the generator in tqdm would keep the previous chunk (and its block) alive.
    from tqdm import tqdm

    bar = tqdm(total=stop - start, desc=f"kNN ({route})", unit="query", mininterval=10, disable=not progress)
    for c in chunks:
        s, e = c[0], c[1]
        indices[s - start : e - start], sims[s - start : e - start] = _finish(x, c, k)
        del c  # drop this chunk's block (held by its full-row function) before the route computes the next
        bar.update(e - s)
    bar.close()
    return indices, sims


def set_threads(threads: int) -> None:
    """Limit torch, faiss (OpenMP) and numpy's BLAS to `threads` threads for this process."""
    threads = max(1, int(threads))
    with contextlib.suppress(ImportError):
        import torch

        torch.set_num_threads(threads)
    faiss = _faiss()
    if faiss is not None:
        faiss.omp_set_num_threads(threads)
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)
