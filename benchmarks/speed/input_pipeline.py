"""CPU and device cost per training sample of the two input pipelines (cpu, device) for each method.

cpu_ms_per_image: CPU time (time.process_time, one torch thread) of building one training sample in this process,
exactly what one DataLoader worker does, averaged over --images samples after one warm-up sample. `cpu`: decode,
crops, resizes and every augmentation (ORL: also the neighbour image and the four RoI patches). `device`: decode
(or, with decode "device", only read the JPEG and its header) and draw the parameters.
device_ms_per_image: wall time per sample of finish_views on the training device (CUDA when available, else this
CPU) over batches of --batch-size collated samples: for `device` the crops, resizes, flips and photometric ops
(and the JPEG decoding with decode "device"); for `cpu` only the transfer. Images: the first --images photos of
../shared/data/coco128 when present, else synthetic 640x480 JPEGs; ORL reads a synthetic correspondence artifact (random boxes, neighbours, pairs).

One JSON line per (method, pipeline, decode) with method, pipeline, decode, cpu_ms_per_image, device_ms_per_image,
and cores_for_1500_per_s (cores one GPU needs to receive 1,500 samples/s), then a table. The `device` pipeline
runs once per --decode value (default both); `--decode worker` gives exactly one line per (method, pipeline).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speed/input_pipeline.py --images 32
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from orl.data.device_augment import collate_samples, finish_views
from orl.methods import build_training_dataset
from photometric_ops import sync_device
from train_throughput import _images, _machine, _synthetic_correspondence

TARGET_PER_S = 1500  # the goal per GPU for BYOL


def cpu_ms_per_sample(dataset, n: int) -> tuple[float, list[dict]]:
    """Mean CPU ms of dataset[(0, i)] over n samples (after one warm-up), and the samples."""
    dataset[(0, 0)]
    samples = []
    t0 = time.process_time()
    for i in range(n):
        samples.append(dataset[(0, i)])
    return 1000 * (time.process_time() - t0) / n, samples


def device_ms_per_sample(samples: list[dict], batch_size: int, device: torch.device, repeats: int = 3) -> float:
    """Best-of-`repeats` wall ms per sample of finish_views (+ transfer) over the collated batches."""
    batches = [collate_samples(samples[i : i + batch_size]) for i in range(0, len(samples), batch_size)]

    finish_views(batches[0], device)  # warm-up (kernels, allocator)
    best = float("inf")
    for _ in range(repeats):
        sync_device(device)
        t0 = time.perf_counter()
        for b in batches:
            out = finish_views(b, device)
            for v in out.values():
                if isinstance(v, torch.Tensor):
                    v.to(device, non_blocking=True)
        sync_device(device)
        best = min(best, time.perf_counter() - t0)
    return 1000 * best / len(samples)


def main() -> None:
    """Measure every (method, pipeline) and print the JSON lines and the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["byol", "orl"], choices=["byol", "moco_v2", "simclr", "orl"])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--roi-size", type=int, default=96)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (a DataLoader worker uses 1)")
    p.add_argument("--decode", nargs="+", default=["worker", "device"], choices=["worker", "device"],
                   help="where the device pipeline decodes JPEGs (the cpu pipeline always decodes in the workers)")
    args = p.parse_args()
    variants = [("cpu", "worker")] + [("device", d) for d in args.decode]  # (pipeline, where JPEGs are decoded)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        index = _images(Path(tmp), args.images)
        corr = _synthetic_correspondence(index, Path(tmp) / "correspondence.h5")
        for method in args.methods:
            extra = {"correspondence": corr, "roi_size": args.roi_size} if method == "orl" else {}
            for pipeline, decode in variants:
                ds = build_training_dataset(method, index, image_size=args.image_size, pipeline=pipeline,
                                            decode=decode, **extra)
                cpu_ms, samples = cpu_ms_per_sample(ds, len(index))
                dev_ms = device_ms_per_sample(samples, args.batch_size, device)
                row = {"method": method, "pipeline": pipeline, "decode": decode, "cpu_ms_per_image": round(cpu_ms, 2),
                       "device_ms_per_image": round(dev_ms, 3),
                       "cores_for_1500_per_s": round(TARGET_PER_S * cpu_ms / 1000, 1),
                       "image_size": args.image_size, "images": len(index), "device": str(device)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n{_machine(device)}; {args.images} images at {args.image_size} px, batch {args.batch_size}")
    print("| method | pipeline | decode | CPU ms / sample | device ms / sample | cores per GPU at 1,500/s | "
          "CPU cost vs cpu |")
    print("|---|---|---|---:|---:|---:|---:|")
    by = {(r["method"], r["pipeline"]): r for r in rows}
    for r in rows:
        ratio = by[r["method"], "cpu"]["cpu_ms_per_image"] / max(r["cpu_ms_per_image"], 1e-9)
        print(f"| {r['method']} | {r['pipeline']} | {r['decode']} | {r['cpu_ms_per_image']:.1f} | "
              f"{r['device_ms_per_image']:.2f} | {r['cores_for_1500_per_s']:.1f} | 1/{ratio:.1f} |")


if __name__ == "__main__":
    main()
