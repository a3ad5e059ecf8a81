"""The GPU check's measurements (run by benchmarks/gpu/gpu_check.sh): one part per GPU path, one JSON object in the end.

Parts: `train` (BYOL and ORL images/s, model only on synthetic tensors and with the real loader in both input
pipelines, the device one with JPEGs decoded in the workers and on the device, peak GPU memory), `ddp` (a
one-process torchrun run: NCCL + SyncBN on a GPU, gloo on CPU), `knn` (exact kNN, faiss against orl's torch route:
time and identical neighbours), `photometric` (the device pipeline's batched ops against kornia's, when kornia
imports; benchmarks/speed/photometric_ops.py), `roi_embed` (RoI-embedding crops/s in fp32 and bf16 and the overlap of
the top-T pairs mined from each), `maskrcnn` (torchvision Mask R-CNN R50-FPN training iterations/s on synthetic
targets). Missing optional packages skip their part with a line saying so; all data is synthetic. --smoke: tiny sizes on whatever device there is (the test runs it on CPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# What the parts import: the list plus tqdm (the trainer's progress bar). Checked in a fresh venv holding
# only these, with orl installed --no-deps. Optional packages (faiss, opencv, pycocotools, snakemake) only skip
# their comparison.
REQUIRED = ("torch", "torchvision", "h5py", "numpy", "sklearn", "PIL", "tqdm", "orl")
_missing = [m for m in REQUIRED if importlib.util.find_spec(m) is None]
if _missing:
    raise SystemExit(f"gpu_check: missing Python packages {', '.join(_missing)} (orl: pip install --no-deps -e .)")

import numpy as np  # after the package check, so a missing one is named rather than raised
import torch
from torch.utils.data import DataLoader

from orl.data.datasets import SeededSampler
from orl.data.device_augment import collate_samples, finish_views
from orl.methods import build_method, build_training_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "speed"))  # the speed benchmarks' timing helpers
from photometric_ops import measure as measure_photometric, sync_device
from train_throughput import _images, _machine, _synthetic_correspondence

FULL = {"arch": "resnet50", "size": 224, "roi": 96, "batch": 64, "steps": 20, "images": 256, "knn_n": 118_287,
        "knn_d": 256, "det_size": 800, "det_steps": 10, "heads": {},
        "roi_images": 64, "roi_boxes": 32, "roi_crop": 224, "roi_k": 10, "photo_batch": 256}
SMOKE = {"arch": "resnet18", "size": 32, "roi": 16, "batch": 4, "steps": 2, "images": 8, "knn_n": 2000,
         "knn_d": 32, "det_size": 128, "det_steps": 1,
         "heads": {"proj_hidden": 64, "proj_dim": 32, "pred_hidden": 64},
         "roi_images": 6, "roi_boxes": 4, "roi_crop": 32, "roi_k": 2, "photo_batch": 4}
# (pipeline, decode) pairs the train part feeds from the real loader.
LOADERS = (("cpu", "worker"), ("device", "worker"), ("device", "device"))


def _peak_mb(dev: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if dev.type == "cuda" else None


def _step_fn(method_name: str, s: dict, dev: torch.device):
    """A training step (bf16 autocast + channels_last on GPU) of the method; returns step(batch)."""
    torch.manual_seed(0)
    model = build_method(method_name, arch=s["arch"], **s["heads"]).to(dev)
    on_gpu = dev.type == "cuda"
    if on_gpu:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)

    def step(batch: dict[str, Any]) -> None:
        batch = {k: v.to(dev, non_blocking=True, memory_format=torch.channels_last if on_gpu and v.ndim == 4
                          else torch.preserve_format) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=on_gpu):
            loss = model(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.after_step(0, 1)

    return step


def _timed(step, batches, dev: torch.device) -> float:
    """images/s of `step` over the batches after the first (warm-up)."""
    it = iter(batches)
    first = next(it)
    step(first)
    sync_device(dev)
    n, t0 = 0, time.perf_counter()
    for b in it:
        step(b)
        n += next(iter(b.values())).shape[0]
    sync_device(dev)
    return n / max(time.perf_counter() - t0, 1e-9)


def part_train(s: dict, dev: torch.device, workers: int) -> dict:
    """BYOL and ORL images/s: model only, then the real loader with each pipeline."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        index = _images(Path(tmp), s["images"])
        corr = _synthetic_correspondence(index, Path(tmp) / "corr.h5")
        for method in ("byol", "orl"):
            step = _step_fn(method, s, dev)
            keys = ["view1", "view2"] + (["intra1", "intra2", "inter1", "inter2"] if method == "orl" else [])
            g = torch.Generator().manual_seed(0)
            synth = {k: torch.randn(s["batch"], 3, *(2 * (s["size"] if k.startswith("view") else s["roi"],)),
                                    generator=g) for k in keys}
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            res = {"model_only_images_per_s": round(_timed(step, [synth] * (s["steps"] + 1), dev), 1),
                   "model_only_peak_mb": _peak_mb(dev)}
            extra = {"correspondence": corr, "roi_size": s["roi"]} if method == "orl" else {}
            for pipeline, decode in LOADERS:
                ds = build_training_dataset(method, index, image_size=s["size"], pipeline=pipeline, decode=decode,
                                            **extra)
                sampler = SeededSampler(len(ds), s["batch"])
                loader = DataLoader(ds, batch_size=s["batch"], sampler=sampler, num_workers=workers,
                                    collate_fn=collate_samples, pin_memory=dev.type == "cuda",
                                    persistent_workers=False)
                batches = (finish_views(b, dev) for _ in range(1000) for b in loader)
                limited = (b for _, b in zip(range(s["steps"] + 1), batches))
                name = pipeline if decode == "worker" else f"{pipeline}_{decode}_decode"
                res[f"loader_{name}_images_per_s"] = round(_timed(step, limited, dev), 1)
            out[method] = res
    return out


def part_ddp(s: dict, dev: torch.device) -> dict:
    """One-process torchrun of orl pretrain: NCCL + SyncBN on a GPU, gloo on CPU; a few steps."""
    with tempfile.TemporaryDirectory() as tmp:
        index = _images(Path(tmp), max(s["batch"] * 2, 8))
        from orl.data.image_index import write_index

        ipath = write_index(index, Path(tmp) / "index.h5")
        heads = [f"{k}={v}" for k, v in s["heads"].items()]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "orl.cli",
               "pretrain", "--method", "byol", "--index", str(ipath), "--out", str(Path(tmp) / "run" / "model.pt"),
               "--arch", s["arch"], "--epochs", "1", "--batch-size", str(s["batch"]), "--image-size", str(s["size"]),
               "--workers", "0", "--log-every", "1", "--device", dev.type, "--sync-bn",
               *(["--method-args", *heads] if heads else [])]
        env = {"GLOO_SOCKET_IFNAME": "lo", **os.environ}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        ok = proc.returncode == 0 and (Path(tmp) / "run" / "model.pt").exists()
        return {"backend": "nccl" if dev.type == "cuda" else "gloo", "ok": ok,
                "seconds": round(time.perf_counter() - t0, 1), **({} if ok else {"stderr": proc.stderr[-1500:]})}


def part_knn(s: dict, dev: torch.device) -> dict:
    """Exact kNN (K 10) over random features: orl's torch route against faiss (GPU when there is one)."""
    from orl.mining import knn as K

    x = np.random.default_rng(0).standard_normal((s["knn_n"], s["knn_d"])).astype(np.float32)
    out: dict[str, Any] = {"n": s["knn_n"], "dim": s["knn_d"]}
    routes = [r for r in ("torch", "faiss-gpu" if dev.type == "cuda" else "faiss-cpu") if r in K.available_routes()]
    results = {}
    for route in routes:
        t0 = time.perf_counter()
        results[route] = K.knn(x, 10, route=route, device=str(dev) if route == "torch" else None)[0]
        out[f"{route}_seconds"] = round(time.perf_counter() - t0, 2)
    faiss = [r for r in results if r.startswith("faiss")]
    if faiss:
        out["identical_neighbours"] = float((results["torch"] == results[faiss[0]]).all(axis=1).mean())
    else:
        print("knn: faiss is not importable, only the torch route was timed")
    return out


def part_photometric(s: dict, dev: torch.device) -> dict:
    """ms per image of the device pipeline's photometric ops, orl's and (when it imports) kornia's, per BYOL view."""
    rows = measure_photometric(s["photo_batch"], s["size"], dev, repeats=3)
    out = {f"{r['library']}_view{r['view']}_ms_per_image": r["ms_per_image"] for r in rows}
    if not any(r["library"] == "kornia" for r in rows):
        print("photometric: kornia is not importable, only orl's ops were timed")
    return {"batch": s["photo_batch"], **out}


def part_roi_embed(s: dict, dev: torch.device) -> dict:
    """Stage-2 RoI embedding (crop mode) in fp32 and bf16: crops/s, and how many mined top-T pairs bf16 keeps.

    Random-init backbone (eval mode) over synthetic smooth images and random boxes; each image's neighbours are the
    next roi_k images. Pair overlap = |top-T pairs(fp32) & top-T pairs(bf16)| / T per (image, neighbour), T = 10 %.
    """
    from orl.mining.correspondence import mine_query
    from orl.mining.roi_embed import RoiEmbedder, crop_rois
    from PIL import Image

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    backbone = build_method("byol", arch=s["arch"], **s["heads"]).online_backbone()
    crops = []
    for _ in range(s["roi_images"]):
        img = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((640, 480), Image.BILINEAR)
        wh = rng.integers(32, 320, (s["roi_boxes"], 2))
        xy = rng.random((s["roi_boxes"], 2)) * ([640, 480] - wh)
        crops.append(torch.from_numpy(crop_rois(img, np.concatenate([xy.astype(int), wh], axis=1), s["roi_crop"])))
    out: dict[str, Any] = {"crops": s["roi_images"] * s["roi_boxes"], "crop_size": s["roi_crop"]}
    emb = {}
    for precision in ("fp32", "bf16"):
        embedder = RoiEmbedder(backbone, device=dev, batch_size=min(256, s["roi_boxes"] * 8), precision=precision)
        embedder.embed_crops(crops[0])  # warm-up
        sync_device(dev)
        t0 = time.perf_counter()
        emb[precision] = [embedder.embed_crops(c) for c in crops]
        sync_device(dev)
        out[f"{precision}_crops_per_s"] = round(out["crops"] / (time.perf_counter() - t0), 1)
    overlaps = []
    n, k = s["roi_images"], s["roi_k"]
    for q in range(n):
        neigh = [(q + 1 + j) % n for j in range(k)]
        mined = {p: mine_query(emb[p][q], [emb[p][j] for j in neigh], 0.1) for p in emb}
        for (a, _), (b, _) in zip(mined["fp32"], mined["bf16"]):
            overlaps.append(len(set(map(tuple, a.tolist())) & set(map(tuple, b.tolist()))) / len(a))
    out["top_t_pair_overlap"] = round(float(np.mean(overlaps)), 4)
    if dev.type != "cuda":
        out["note"] = "CPU: RoiEmbedder autocasts only on CUDA, so bf16 equals fp32 here"
    return out


def part_maskrcnn(s: dict, dev: torch.device) -> dict:
    """torchvision Mask R-CNN R50-FPN training iterations/s at det_size on synthetic images and targets."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    size = s["det_size"]
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=81, min_size=size,
                                  max_size=size).to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=g).to(dev) for _ in range(2)]
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.4, 0.3, 0.9, 0.8]]) * size
    masks = torch.zeros(2, size, size, dtype=torch.uint8)
    for m, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
        m[y0:y1, x0:x1] = 1
    targets = [{"boxes": boxes.to(dev), "labels": torch.tensor([1, 2], device=dev), "masks": masks.to(dev)}] * 2

    def step(_: Any) -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(None)
    sync_device(dev)
    t0 = time.perf_counter()
    for _ in range(s["det_steps"]):
        step(None)
    sync_device(dev)
    return {"size": size, "batch": 2, "iterations_per_s": round(s["det_steps"] / (time.perf_counter() - t0), 2),
            "peak_mb": _peak_mb(dev)}


PARTS = {"train": part_train, "ddp": part_ddp, "knn": part_knn, "photometric": part_photometric,
         "roi_embed": part_roi_embed, "maskrcnn": part_maskrcnn}


def main() -> None:
    """Run the parts, print a table, write --out JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes (CPU smoke test)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="loader workers (default: the cores)")
    args = p.parse_args()
    s = SMOKE if args.smoke else FULL
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cpu" and not args.smoke:
        raise SystemExit("no CUDA device: run with --cpu-smoke, or on a machine with a GPU")
    report: dict[str, Any] = {"machine": _machine(dev), "torch": torch.__version__, "smoke": args.smoke,
                              "settings": {k: v for k, v in s.items() if k != "heads"}}
    for name in args.parts:
        t0 = time.perf_counter()
        kwargs = {"workers": 0 if args.smoke else args.workers} if name == "train" else {}
        try:
            report[name] = PARTS[name](s, dev, **kwargs)
        except ImportError as e:  # an optional package (e.g. torchvision's detection extras) is missing
            report[name] = {"skipped": str(e)}
            print(f"{name}: skipped ({e})")
        report[name]["part_seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {json.dumps(report[name])}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"\n{report['machine']}\n| part | result |\n|---|---|")
    for name in args.parts:
        print(f"| {name} | {json.dumps(report[name])} |")
    failed = [n for n in args.parts if report[n].get("ok") is False]
    if failed:
        raise SystemExit(f"failed parts: {failed}")


if __name__ == "__main__":
    main()
