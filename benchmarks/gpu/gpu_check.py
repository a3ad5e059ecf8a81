"""The GPU check (run by benchmarks/gpu/gpu_check.sh): one part per GPU path, then a markdown table and a JSON file.

Parts (docs/gpu.md says what each proves): `env` (device, torch, bf16 support), `train` (BYOL and ORL images/s:
model only on synthetic tensors, then the real loader, persistent workers after a warm-up, over varied images, in
both input pipelines, the device one with JPEGs decoded in the workers and on the device), `sync_free` (finish_views
under torch.cuda.set_sync_debug_mode("error")), `decode_race` (benchmarks/gpu/decode_race.py: the CUDA decode race
on the old path, none on orl's), `ddp` (two ranks under torchrun, benchmarks/gpu/ddp_step.py: DDP, SyncBatchNorm,
NCCL where each rank has a GPU), `knn` (exact kNN, faiss against orl's torch route), `photometric` (the device
pipeline's batched ops against kornia's, when kornia imports), `roi_embed` (RoI-embedding crops/s in fp32 and bf16,
overlap of the top-T pairs mined from each), `maskrcnn` (orl's Mask R-CNN, orl.bench.detection_model, training
iterations/s). Each part has a time budget (all together 10 minutes on one H100); GPU-only parts report "skipped:
needs CUDA" on CPU. --smoke: tiny sizes on whatever device there is (the test runs it on CPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
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

from PIL import Image

from orl.data.datasets import SeededSampler
from orl.data.device_augment import collate_samples, finish_views
from orl.data.image_index import ImageIndex, build_index
from orl.methods import build_method, build_training_dataset

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "speed"))  # the speed benchmarks' timing helpers
sys.path.insert(0, str(HERE))
from decode_race import corrupted_sums  # noqa: E402
from photometric_ops import measure as measure_photometric, sync_device  # noqa: E402
from train_throughput import _machine, _synthetic_correspondence  # noqa: E402

FULL = {"arch": "resnet50", "size": 224, "roi": 96, "batch": 64, "steps": 20, "warmup": 3, "images": 256,
        "knn_n": 118_287, "knn_d": 256, "det_size": 800, "det_steps": 10, "heads": {}, "det_heads": {},
        "roi_images": 64, "roi_boxes": 32, "roi_crop": 224, "roi_k": 10, "photo_batch": 256, "race_iterations": 50,
        "ddp_batch": 32, "image_scale": 1.0}
SMOKE = {"arch": "resnet18", "size": 32, "roi": 16, "batch": 4, "steps": 2, "warmup": 1, "images": 8, "knn_n": 2000,
         "knn_d": 32, "det_size": 128, "det_steps": 1,
         "heads": {"proj_hidden": 64, "proj_dim": 32, "pred_hidden": 64},
         "det_heads": {"fpn_channels": 32, "box_head_dim": 64, "roi_batch_size": 32, "test_proposals": 50},
         "roi_images": 6, "roi_boxes": 4, "roi_crop": 32, "roi_k": 2, "photo_batch": 4, "race_iterations": 2,
         "ddp_batch": 4, "image_scale": 0.25}
# (pipeline, decode) pairs the train part feeds from the real loader.
LOADERS = (("cpu", "worker"), ("device", "worker"), ("device", "device"))
# Seconds each part may take on one H100 (full sizes); 600 in all. A part over its budget is marked in the table.
BUDGET_S = {"env": 5, "train": 240, "sync_free": 20, "decode_race": 30, "ddp": 60, "knn": 60, "photometric": 20,
            "roi_embed": 45, "maskrcnn": 60}
TOTAL_BUDGET_S = 600
NEEDS_CUDA = "skipped: needs CUDA"
# The train part's images, cycled: (mode, (width, height), PIL save options). The last image is a PNG.
IMAGE_KINDS = (("RGB", (640, 480), {}), ("RGB", (500, 375), {"progressive": True}), ("L", (640, 427), {}),
               ("CMYK", (480, 640), {}), ("RGB", (800, 600), {"subsampling": 0}), ("RGB", (1024, 768), {}),
               ("RGB", (333, 500), {"quality": 75}))


def varied_images(folder: Path, n: int, scale: float = 1.0) -> ImageIndex:
    """n smooth random images of IMAGE_KINDS (baseline, progressive, grey, CMYK, 4:4:4 JPEGs, sizes 333-1024 px
    times `scale`), the last one a PNG; their index."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        mode, (w, h), options = IMAGE_KINDS[i % len(IMAGE_KINDS)]
        size = (round(w * scale), round(h * scale))
        small = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize(size, Image.BILINEAR).convert(mode)
        if i == n - 1:
            img.save(folder / f"{i:04d}.png")
        else:
            img.save(folder / f"{i:04d}.jpg", **{"quality": 90, **options})
    return build_index(folder)


class _CountFallbacks(logging.Handler):
    """Counts the files orl.data.device_decode decoded with PIL because the device decoder rejected them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.files: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        self.files.add(record.getMessage().split(": ", 1)[0])


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


def _timed(step, batches, dev: torch.device, warmup: int = 1) -> float:
    """images/s of `step` over the batches after the first `warmup` ones."""
    it = iter(batches)
    for _ in range(warmup):
        step(next(it))
    sync_device(dev)
    n, t0 = 0, time.perf_counter()
    for b in it:
        step(b)
        n += next(iter(b.values())).shape[0]
    sync_device(dev)
    return n / max(time.perf_counter() - t0, 1e-9)


def part_env(s: dict, dev: torch.device) -> dict:
    """The device, torch and CUDA versions, and whether the GPU computes bf16 natively."""
    out: dict[str, Any] = {"device": _machine(dev), "torch": torch.__version__, "cuda": torch.version.cuda}
    if dev.type != "cuda":
        return {**out, "rows": [["env", "measured", f"{out['device']}, torch {out['torch']}"],
                                ["bf16", NEEDS_CUDA, ""]]}
    out["bf16_supported"] = torch.cuda.is_bf16_supported()
    out["capability"] = ".".join(map(str, torch.cuda.get_device_capability(dev)))
    return {**out, "rows": [["env", "measured", f"{out['device']} (sm {out['capability']}), torch {out['torch']}, "
                                                f"CUDA {out['cuda']}"],
                            ["bf16", "measured", f"torch.cuda.is_bf16_supported() = {out['bf16_supported']}"
                             f"{'' if out['bf16_supported'] else ' (orl falls back to fp16 autocast + GradScaler)'}"]]}


def _loader(ds, s: dict, workers: int, dev: torch.device) -> DataLoader:
    # Persistent workers, as orl's trainer: no worker start-up inside the timed steps, epoch after epoch.
    return DataLoader(ds, batch_size=s["batch"], sampler=SeededSampler(len(ds), s["batch"]), num_workers=workers,
                      collate_fn=collate_samples, pin_memory=dev.type == "cuda", persistent_workers=workers > 0)


def part_train(s: dict, dev: torch.device, workers: int) -> dict:
    """BYOL and ORL images/s: model only, then the real loader with each pipeline, over varied images."""
    out: dict[str, Any] = {}
    fallbacks = _CountFallbacks()
    logging.getLogger("orl.data.device_decode").addHandler(fallbacks)
    with tempfile.TemporaryDirectory() as tmp:
        index = varied_images(Path(tmp) / "images", s["images"], s["image_scale"])
        corr = _synthetic_correspondence(index, Path(tmp) / "corr.h5")
        for method in ("byol", "orl"):
            step = _step_fn(method, s, dev)
            keys = ["view1", "view2"] + (["intra1", "intra2", "inter1", "inter2"] if method == "orl" else [])
            g = torch.Generator().manual_seed(0)
            synth = {k: torch.randn(s["batch"], 3, *(2 * (s["size"] if k.startswith("view") else s["roi"],)),
                                    generator=g) for k in keys}
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            res = {"model_only_images_per_s": round(_timed(step, [synth] * (s["steps"] + s["warmup"]), dev,
                                                           s["warmup"]), 1),
                   "model_only_peak_mb": _peak_mb(dev)}
            extra = {"correspondence": corr, "roi_size": s["roi"]} if method == "orl" else {}
            for pipeline, decode in LOADERS:
                ds = build_training_dataset(method, index, image_size=s["size"], pipeline=pipeline, decode=decode,
                                            **extra)
                loader = _loader(ds, s, workers, dev)
                batches = (finish_views(b, dev) for _ in range(1000) for b in loader)
                limited = (b for _, b in zip(range(s["steps"] + s["warmup"]), batches))
                name = pipeline if decode == "worker" else f"{pipeline}_{decode}_decode"
                res[f"loader_{name}_images_per_s"] = round(_timed(step, limited, dev, s["warmup"]), 1)
                del batches, limited, loader  # ends the persistent workers
            out[method] = res
    logging.getLogger("orl.data.device_decode").removeHandler(fallbacks)
    kinds = sorted({f"{m} {w}x{h}{' ' + ','.join(o) if o else ''}" for m, (w, h), o in IMAGE_KINDS})
    out["images"] = f"{s['images']}: {'; '.join(kinds)}; one PNG; sizes x {s['image_scale']}"
    out["device_decode_pil_fallback_files"] = len(fallbacks.files)
    return out


def _device_batch(method: str, index: ImageIndex, s: dict, decode: str, corr: Path, dev: torch.device) -> dict:
    """One collated device-pipeline batch of `method`, its images pinned as the DataLoader pins them on a GPU."""
    extra = {"correspondence": corr, "roi_size": s["roi"]} if method == "orl" else {}
    ds = build_training_dataset(method, index, image_size=s["size"], pipeline="device", decode=decode, **extra)
    batch = collate_samples([ds[(0, i)] for i in range(min(s["batch"], len(ds)))])
    if dev.type == "cuda":
        batch["images"] = [[t.pin_memory() for t in imgs] for imgs in batch["images"]]
    return batch


def part_sync_free(s: dict, dev: torch.device) -> dict:
    """finish_views of worker-decoded BYOL and ORL batches under set_sync_debug_mode("error"): any host-device sync
    raises. Batches of JPEGs decoded on the device run under "warn" and are reported, not judged: nvJPEG waits for
    its own work on the host."""
    if dev.type != "cuda":
        return {"status": NEEDS_CUDA}
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        index = varied_images(Path(tmp) / "images", max(s["batch"], len(IMAGE_KINDS) + 1), s["image_scale"])
        corr = _synthetic_correspondence(index, Path(tmp) / "corr.h5")
        for method in ("byol", "orl"):
            for decode, mode in (("worker", "error"), ("device", "warn")):
                batch = _device_batch(method, index, s, decode, corr, dev)
                finish_views(batch, dev)  # warm-up: constants, decoder handles, side stream
                torch.cuda.synchronize(dev)
                key = f"{method}_{decode}_decode"
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode(mode)
                    try:
                        finish_views(batch, dev)
                        out[key] = "no sync"
                    except RuntimeError as e:
                        out[key] = f"sync: {str(e).splitlines()[0][:160]}"
                    finally:
                        torch.cuda.set_sync_debug_mode(0)
                syncs = [w for w in caught if "synchronizing" in str(w.message)]
                if syncs:
                    out[key] = f"{len(syncs)} syncs: {str(syncs[0].message).splitlines()[0][:160]}"
                torch.cuda.synchronize(dev)
    ok = all(out[f"{m}_worker_decode"] == "no sync" for m in ("byol", "orl"))
    return {**out, "status": "pass" if ok else "FAIL"}


def part_decode_race(s: dict, dev: torch.device) -> dict:
    """Sums that queued kernels read from freed memory while a batch is decoded: old path vs orl's side stream."""
    if dev.type != "cuda":
        return {"status": NEEDS_CUDA}
    n = s["race_iterations"]
    old, checked = corrupted_sums(dev, ordered=False, iterations=n)
    fixed, _ = corrupted_sums(dev, ordered=True, iterations=n)
    shown = "race shown" if old else "race not reproduced on this GPU (the fix is then unproven here)"
    return {"sums_checked": checked, "old_path_corrupted": old, "fixed_path_corrupted": fixed,
            "status": "pass" if fixed == 0 else "FAIL",
            "summary": f"old path {old}/{checked} sums corrupted ({shown}); orl's path {fixed}/{checked}"}


def part_ddp(s: dict, dev: torch.device) -> dict:
    """Two ranks under torchrun (benchmarks/gpu/ddp_step.py): DDP on every device, SyncBatchNorm and NCCL on GPUs."""
    with tempfile.TemporaryDirectory() as tmp:
        out_json = Path(tmp) / "ddp.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(HERE / "ddp_step.py"), "--arch", s["arch"], "--size", str(s["size"]),
               "--batch", str(s["ddp_batch"]), "--heads", json.dumps(s["heads"]), "--out", str(out_json)]
        env = {"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", **os.environ}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0 or not out_json.exists():
            return {"status": "FAIL", "summary": "torchrun failed", "stderr": proc.stderr[-1500:]}
        r = json.loads(out_json.read_text())
    ddp_ok = r["world_size"] >= 2 and r["params_equal_after_step"]
    rows = [["ddp", "pass" if ddp_ok else "FAIL",
             f"world size {r['world_size']}, {r['backend']} on {r['device'].split(':')[0]}, parameters equal on "
             f"every rank after a step: {r['params_equal_after_step']}"]]
    if dev.type != "cuda":
        rows += [["sync_bn", NEEDS_CUDA, "SyncBatchNorm runs on GPUs only (per-rank BN on CPU)"],
                 ["nccl", NEEDS_CUDA, ""]]
    else:
        sbn_ok = r["sync_bn_modules"] > 0 and r["bn_running_mean_equal"]
        rows.append(["sync_bn", "pass" if sbn_ok else "FAIL",
                     f"{r['sync_bn_modules']} SyncBatchNorm modules, BN running means equal across ranks fed "
                     f"different images: {r['bn_running_mean_equal']}"])
        if r["backend"] == "nccl":
            rows.append(["nccl", "pass" if ddp_ok else "FAIL", f"{r['gpus']} GPUs, one rank each"])
        else:
            rows.append(["nccl", "not verified", f"{r['gpus']} GPU: two ranks cannot share one GPU under NCCL, so "
                                                 "they ran on gloo; a multi-GPU NCCL run was impossible here"])
    return {**r, "rows": rows}


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
    """orl's Mask R-CNN (orl.bench.detection_model: live BN, FPN norm) training iterations/s at det_size."""
    from orl.bench.detection_model import HeadSizes, build_mask_rcnn

    size = s["det_size"]
    torch.manual_seed(0)
    model = build_mask_rcnn(s["arch"], 80, None, train_min_sizes=(size,), train_max_size=size, test_min_size=size,
                            test_max_size=size, heads=HeadSizes(**s["det_heads"])).to(dev).train()
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
    return {"arch": s["arch"], "size": size, "batch": 2,
            "iterations_per_s": round(s["det_steps"] / (time.perf_counter() - t0), 2), "peak_mb": _peak_mb(dev)}


PARTS = {"env": part_env, "train": part_train, "sync_free": part_sync_free, "decode_race": part_decode_race,
         "ddp": part_ddp, "knn": part_knn, "photometric": part_photometric, "roi_embed": part_roi_embed,
         "maskrcnn": part_maskrcnn}


def _summary(result: dict) -> str:
    """A part's numbers as `key value` pairs, one level of nesting flattened (the table's result column)."""
    if "summary" in result:
        return result["summary"]
    pairs = []
    for k, v in result.items():
        if k in ("status", "rows", "part_seconds"):
            continue
        items = v.items() if isinstance(v, dict) else [(None, v)]
        pairs += [f"{k}{'.' + kk if kk else ''} {vv}" for kk, vv in items if vv is not None]
    return ", ".join(pairs).replace("|", "/")


def table(report: dict, parts: list[str], smoke: bool) -> list[str]:
    """The markdown table of the run: a row per check (a part may give several), its time against its budget."""
    lines = ["| part | status | seconds (budget) | result |", "|---|---|---|---|"]
    total = 0.0
    for name in parts:
        r = report[name]
        seconds = r["part_seconds"]
        total += seconds
        over = not smoke and seconds > BUDGET_S[name]
        budget = f"{seconds} ({BUDGET_S[name]}{', OVER' if over else ''})"
        rows = r.get("rows") or [[name, r.get("status", "measured"), _summary(r)]]
        for i, (row, status, text) in enumerate(rows):
            lines.append(f"| {row} | {status} | {budget if i == 0 else ''} | {text} |")
    over = not smoke and total > TOTAL_BUDGET_S
    status = "smoke: no budget" if smoke else "OVER" if over else "within budget"
    lines.append(f"| total | {status} | {round(total, 1)} ({TOTAL_BUDGET_S}) | {report['machine']}"
                 f"{', smoke sizes' if smoke else ''} |")
    return lines


def main() -> None:
    """Run the parts, print a markdown table, write --out JSON; exit 1 when a check failed."""
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
                              "settings": {k: v for k, v in s.items() if "heads" not in k}}
    for name in args.parts:
        t0 = time.perf_counter()
        kwargs = {"workers": 0 if args.smoke else args.workers} if name == "train" else {}
        try:
            report[name] = PARTS[name](s, dev, **kwargs)
        except ImportError as e:  # an optional package (e.g. torchvision's detection extras) is missing
            report[name] = {"status": f"skipped: {e}"}
        report[name]["part_seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{name} ({report[name]['part_seconds']} s, budget {BUDGET_S[name]} s): {json.dumps(report[name])}",
              flush=True)
    lines = table(report, args.parts, args.smoke)
    report["table"] = lines
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print("\n" + "\n".join(lines))
    failed = [line.split(" | ")[0].strip("| ") for line in lines[2:] if " | FAIL" in line]
    if failed:
        raise SystemExit(f"failed checks: {failed}")


if __name__ == "__main__":
    main()
