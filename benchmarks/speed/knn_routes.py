"""Time every kNN route (orl.mining.knn) on random L2-normalised features and print a markdown table.

    .venv/bin/python benchmarks/speed/knn_routes.py                 # 10k x 2048 and 10k x 256, K=10, all routes
    .venv/bin/python benchmarks/speed/knn_routes.py --coco-plus 2   # + the first 2 chunks of COCO+ (241,690 x 256)

Each (route, size) runs in a fresh subprocess so that its peak resident memory (VmHWM) is its own; the time is the
best of --repeats runs after loading the data. Every route's indices are compared with the numpy route's.
The COCO+ rows search only the first few query chunks against all 241,690 images and extrapolate the total time:
they show the memory bound of the chunked search without hours of CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time

COCO_PLUS = 241_690


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _worker(route: str, n: int, d: int, k: int, threads: int, repeats: int, chunks: int) -> dict:
    import numpy as np

    from orl.mining.knn import chunk_rows, knn, set_threads

    set_threads(threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    chunk = chunk_rows(n, route=route)
    query_range = (0, min(n, chunks * chunk)) if chunks else None
    gpu_peak = None
    if route in ("torch", "faiss-gpu"):
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    rss_before = _status_kib("VmRSS")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        idx, _sims = knn(x, k, route=route, query_range=query_range)
        times.append(time.perf_counter() - t0)
    if route == "torch":
        import torch

        if torch.cuda.is_available():
            gpu_peak = torch.cuda.max_memory_allocated() / 2**20
    rows = len(idx)
    return {
        "route": route,
        "n": n,
        "d": d,
        "k": k,
        "rows": rows,
        "chunk": chunk,
        "seconds": min(times),
        "extrapolated_s": min(times) * n / rows,
        "peak_extra_mib": (_status_kib("VmHWM") - rss_before) / 1024,
        "data_mib": x.nbytes / 2**20,
        "gpu_peak_mib": gpu_peak,
        "digest": hashlib.sha256(idx.tobytes()).hexdigest()[:12],
    }


def _run(route: str, n: int, d: int, k: int, threads: int, repeats: int, chunks: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--worker", route, str(n), str(d), str(k), str(threads), str(repeats), str(chunks)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        return {"route": route, "n": n, "d": d, "error": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Benchmark the routes and print the machine and a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[2048, 256])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--routes", nargs="+", default=None, help="default: every available route")
    parser.add_argument(
        "--coco-plus", type=int, default=0, metavar="CHUNKS", help="also run CHUNKS query chunks of COCO+"
    )
    args = parser.parse_args()

    import faiss
    import numpy as np
    import torch

    from orl.mining.knn import available_routes, resolve_route

    routes = args.routes or available_routes()
    print(f"- CPU: {_cpu_model()}, {os.cpu_count()} logical cores; {args.threads} threads per route")
    if torch.cuda.is_available():
        print(f"- GPU: {torch.cuda.get_device_name(0)}")
    gpus = faiss.get_num_gpus()
    print(f"- torch {torch.__version__}, faiss {faiss.__version__} ({gpus} GPUs), numpy {np.__version__}")
    print(f"- auto route here: {resolve_route('auto', args.k)}")
    print()
    print("| features | route | time (s) | peak extra RSS (MiB) | GPU peak (MiB) | chunk rows | same as numpy |")
    print("|---|---|---:|---:|---:|---:|---|")
    for d in args.dims:
        results = [_run(r, args.n, d, args.k, args.threads, args.repeats) for r in routes]
        ref = next((r.get("digest") for r in results if r["route"] == "numpy"), None)
        for r in results:
            _row(r, f"{args.n:,} x {d}", ref)
    if args.coco_plus:
        for route in [r for r in routes if r != "numpy"] + ["numpy"]:
            r = _run(route, COCO_PLUS, 256, args.k, args.threads, 1, args.coco_plus)
            _row(r, f"{COCO_PLUS:,} x 256 (first {r.get('rows', '?')} queries; total extrapolated)", None)
    sys.stdout.flush()


def _row(r: dict, label: str, ref: str | None) -> None:
    if "error" in r:
        print(f"| {label} | {r['route']} | error: {r['error']} | | | | |")
        return
    secs = f"{r['seconds']:.2f}"
    if r["rows"] < r["n"]:
        secs += f" (-> {r['extrapolated_s']:.0f} total)"
    gpu = f"{r['gpu_peak_mib']:.0f}" if r["gpu_peak_mib"] is not None else "-"
    same = "-" if ref is None else ("yes" if r["digest"] == ref else "NO")
    print(f"| {label} | {r['route']} | {secs} | {r['peak_extra_mib']:.0f} | {gpu} | {r['chunk']} | {same} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        route, *nums = sys.argv[2:]
        n, d, k, threads, repeats, chunks = map(int, nums)
        print(json.dumps(_worker(route, n, d, k, threads, repeats, chunks)))
    else:
        main()
