"""Training throughput (images/s, one image = one pair of views) of the orl trainer on the current device.

Three numbers for one method / backbone / image size / per-process batch:
  model step   orl's Trainer on synthetic, already-normalised tensors (what the GPU/CPU can do),
  data only    the real DataLoader: JPEG decode + the two BYOL views, --workers processes, no model,
  full step    orl's Trainer on the real JPEGs through that DataLoader (what a run gets);
and, when the `lightly` package imports, lightly's BYOL (its heads, NegativeCosineSimilarity, update_momentum; a plain
loop like its examples) with the same backbone, heads, batch, size, precision and memory format, on synthetic tensors,
with the ratio orl / lightly. Images: the first --images photos of ../shared/data/coco128 when present, else
synthetic 640x480 JPEGs.

With --method orl (stage 3) every measurement also runs for BYOL on the same settings and the ratio is printed (the
paper's cost is ~1.4x BYOL per iteration): the synthetic batches gain the four --roi-size RoI tensors, and the
real-image runs read a synthetic correspondence artifact (random kept boxes, neighbours and pairs); lightly is skipped.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/speed/train_throughput.py --method orl --arch resnet18 --image-size 64 \
        --batch-size 16 --skip data full

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/speed/train_throughput.py --arch resnet18 --image-size 96 --batch-size 32

--pipeline device (--decode device) runs the real-image measurements through the device input pipeline instead
(orl.data.device_augment; the data-only number then includes finish_views in this process).
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from orl.artifacts import Csr, write_artifact
from orl.data.datasets import SeededDataset
from orl.data.image_index import ImageIndex, build_index
from orl.methods import build_training_dataset
from orl.runtime import choose_device
from orl.stages.pretrain import parse_method_args
from orl.train.trainer import TrainConfig, Trainer

COCO128 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "coco128" / "images"
ORL_ROI_KEYS = ("intra1", "intra2", "inter1", "inter2")
ORL_ONLY_ARGS = ("w_global", "w_intra", "w_inter")  # constructor arguments BYOL does not have


class SyntheticViews(SeededDataset):
    """`n` items of fixed random normalised views (no decode, no augmentation); with roi_size, ORL's 4 RoIs too."""

    def __init__(self, n: int, size: int, roi_size: int | None = None) -> None:
        super().__init__(ImageIndex(Path("."), [f"{i}" for i in range(n)], np.arange(n), np.full(n, size),
                                    np.full(n, size)))
        g = torch.Generator().manual_seed(0)
        self.v1 = torch.randn(n, 3, size, size, generator=g)
        self.v2 = torch.randn(n, 3, size, size, generator=g)
        self.rois = {} if roi_size is None else {
            k: torch.randn(n, 3, roi_size, roi_size, generator=g) for k in ORL_ROI_KEYS
        }

    def sample(self, i: int) -> dict[str, Any]:
        """Item i's pre-made views."""
        return {"view1": self.v1[i], "view2": self.v2[i], **{k: v[i] for k, v in self.rois.items()}, "index": i}


def _synthetic_correspondence(index: ImageIndex, path: Path, k: int = 10, boxes_per_image: int = 20) -> Path:
    """A correspondence artifact for `index` with random kept boxes, neighbours and T = int(0.1 B) pairs per row."""
    rng = np.random.default_rng(0)
    n, k = len(index), min(k, len(index) - 1) or 1
    boxes = []
    for w, h in zip(index.widths.tolist(), index.heights.tolist()):
        bw = rng.integers(max(1, w // 8), w + 1, boxes_per_image)
        bh = rng.integers(max(1, h // 8), h + 1, boxes_per_image)
        boxes.append(np.stack([rng.integers(0, w - bw + 1), rng.integers(0, h - bh + 1), bw, bh], 1).astype(np.int32))
    neighbors = np.stack([rng.permutation(np.delete(np.arange(n), i))[:k] if n > 1 else np.zeros(k, np.int64)
                          for i in range(n)]).astype(np.int64)
    t = max(1, int(0.1 * boxes_per_image))

    def pick(i: int) -> np.ndarray:
        return boxes[i][rng.integers(0, boxes_per_image, t)]

    pairs = [np.concatenate([pick(q), pick(nb)], 1) for q in range(n) for nb in neighbors[q]]
    ids = [np.zeros((t, 2), np.int32)] * (n * k)
    return write_artifact(path, stage="correspondence", image_list_digest=index.digest, params={"synthetic": True},
                          arrays={"boxes": Csr.from_rows(boxes, (4,), np.int32), "neighbors": neighbors,
                                  "pairs": Csr.from_rows(pairs, (8,), np.int32),
                                  "pair_scores": Csr.from_rows([np.ones(t, np.float32)] * (n * k), (), np.float32),
                                  "pair_box_ids": Csr.from_rows(ids, (2,), np.int32)})


def _dataset(args: argparse.Namespace, index: ImageIndex, tmp: Path) -> SeededDataset:
    """The method's real-image dataset (ORL: over a synthetic correspondence artifact for these images)."""
    split = {"pipeline": args.pipeline, "decode": args.decode}
    if args.method != "orl":
        return build_training_dataset(args.method, index, image_size=args.image_size, **split)
    corr = _synthetic_correspondence(index, tmp / f"correspondence-{index.digest}.h5")
    return build_training_dataset("orl", index, image_size=args.image_size, correspondence=corr, roi_size=args.roi_size,
                                  **split)


def _as_byol(args: argparse.Namespace) -> argparse.Namespace:
    """The same settings for BYOL (ORL's baseline): ORL-only constructor arguments dropped."""
    return argparse.Namespace(**{**vars(args), "method": "byol",
                                 "method_args": {k: v for k, v in args.method_args.items() if k not in ORL_ONLY_ARGS}})


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, load {os.getloadavg()[0]:.1f}"


def _images(tmp: Path, n: int) -> ImageIndex:
    if COCO128.is_dir() and len(list(COCO128.glob("*.jpg"))) >= n:
        folder = tmp / "coco"
        folder.mkdir()
        for p in sorted(COCO128.glob("*.jpg"))[:n]:
            (folder / p.name).symlink_to(p)
    else:
        folder = tmp / "synthetic"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(n):
            small = rng.integers(0, 256, (61, 81, 3), dtype=np.uint8)
            Image.fromarray(small).resize((640, 480), Image.BILINEAR).save(folder / f"{i:04d}.jpg", quality=90)
    return build_index(folder)


def _trainer_throughput(args: argparse.Namespace, dataset: Any, out: Path, workers: int) -> float:
    """Run the real Trainer for warmup + timed steps; images/s over the timed steps (from its metrics.csv)."""
    steps_per_epoch = len(dataset) // args.batch_size
    epochs = -(-(args.warmup + args.steps) // steps_per_epoch)
    cfg = TrainConfig(method=args.method, method_args=args.method_args, epochs=epochs, batch_size=args.batch_size,
                      warmup_epochs=0, workers=workers, checkpoint_every=10**6, keep_checkpoints=1, log_every=1,
                      precision=args.precision, image_size=args.image_size,
                      pipeline=args.pipeline, decode=args.decode)
    from orl.runtime import Runtime

    rt = Runtime(0, 0, 1, args.device)
    Trainer(cfg, dataset, out, runtime=rt).fit()
    with open(out.parent / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))[args.warmup : args.warmup + args.steps]
    seconds = sum(args.batch_size / float(r["images_per_s"]) for r in rows)
    return len(rows) * args.batch_size / seconds


def _data_throughput(args: argparse.Namespace, dataset: Any) -> float:
    """Images/s of the DataLoader alone (decode + two views; device pipeline: + finish_views), after one warmup batch."""
    from orl.data.datasets import SeededSampler
    from orl.data.device_augment import collate_samples, finish_views

    sampler = SeededSampler(len(dataset), args.batch_size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, collate_fn=collate_samples,
                                         num_workers=args.workers, persistent_workers=args.workers > 0)
    n, t0 = 0, None
    for epoch in range(100):
        sampler.set_epoch(epoch)
        for raw in loader:
            batch = finish_views(raw, args.device)
            if t0 is None:
                t0 = time.perf_counter()  # the first batch pays for worker start-up
                continue
            n += batch["view1"].shape[0]
            if n >= args.batch_size * args.steps:
                return n / (time.perf_counter() - t0)
    return n / (time.perf_counter() - t0)


def _lightly_throughput(args: argparse.Namespace) -> float | None:
    """lightly's BYOL (its heads, loss and momentum update) on synthetic tensors; None without lightly."""
    try:
        import torchvision
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad, update_momentum
    except ImportError:
        return None
    from orl.models.backbones import feature_dim

    hp = {"proj_hidden": 4096, "proj_dim": 256, "pred_hidden": 4096, **args.method_args}
    dev, on_gpu = args.device, args.device.type == "cuda"
    torch.manual_seed(0)
    net = getattr(torchvision.models, hp["arch"])()
    backbone = nn.Sequential(*list(net.children())[:-1])  # up to and including the global average pool
    projection = BYOLProjectionHead(feature_dim(hp["arch"]), hp["proj_hidden"], hp["proj_dim"])
    prediction = BYOLPredictionHead(hp["proj_dim"], hp["pred_hidden"], hp["proj_dim"])
    backbone_m, projection_m = copy.deepcopy(backbone), copy.deepcopy(projection)
    deactivate_requires_grad(backbone_m)
    deactivate_requires_grad(projection_m)
    modules = nn.ModuleList([backbone, projection, prediction, backbone_m, projection_m]).to(dev)
    fmt = torch.channels_last if on_gpu else torch.contiguous_format
    modules.to(memory_format=fmt)
    criterion = NegativeCosineSimilarity()
    params = [p for m in (backbone, projection, prediction) for p in m.parameters()]
    opt = torch.optim.SGD(params, lr=0.06, momentum=0.9, weight_decay=1e-4)
    x0 = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=dev).to(memory_format=fmt)
    x1 = torch.randn_like(x0)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=on_gpu and args.precision == "bf16")

    def step() -> None:
        update_momentum(backbone, backbone_m, m=0.99)
        update_momentum(projection, projection_m, m=0.99)
        with amp:
            p0 = prediction(projection(backbone(x0).flatten(start_dim=1)))
            p1 = prediction(projection(backbone(x1).flatten(start_dim=1)))
            with torch.no_grad():
                z0 = projection_m(backbone_m(x0).flatten(start_dim=1))
                z1 = projection_m(backbone_m(x1).flatten(start_dim=1))
        loss = 0.5 * (criterion(p0.float(), z1.float()) + criterion(p1.float(), z0.float()))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    modules.train()
    for _ in range(args.warmup):
        step()
    if on_gpu:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if on_gpu:
        torch.cuda.synchronize()
    return args.steps * args.batch_size / (time.perf_counter() - t0)


def _report(results: dict[str, float | None], name: str | None = None) -> None:
    # Partial results as they come, so a slow run that is cut short still says something.
    name, value = list(results.items())[-1] if name is None else (name, results[name])
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {value if value is None else round(value, 2)} images/s", flush=True)


def main() -> None:
    """Parse flags, run the measurements, print a markdown table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="byol")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=1, help="alternating orl / lightly model-step runs; best of each")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the real-image runs")
    p.add_argument("--images", type=int, default=128, help="photos for the real-image runs")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--skip", nargs="*", default=[], choices=("model", "data", "full", "lightly"))
    p.add_argument("--method-args", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--pipeline", choices=("cpu", "device"), default="cpu", help="input pipeline of the real-image runs")
    p.add_argument("--decode", choices=("worker", "device"), default="worker", help="device pipeline: JPEG decoding")
    p.add_argument("--roi-size", type=int, default=None,
                   help="--method orl: RoI side (default: 96 px scaled like --image-size from 224)")
    args = p.parse_args()
    if args.roi_size is None:
        args.roi_size = max(1, round(96 * args.image_size / 224))
    orl = args.method == "orl"
    if orl and "lightly" not in args.skip:
        args.skip.append("lightly")  # lightly's model is BYOL: ORL is compared with orl's own BYOL instead
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = choose_device(args.device)
    args.method_args = {"arch": args.arch, **parse_method_args(args.method_args)}
    if args.device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    results: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        # orl and lightly alternate, best of --repeats each: on a shared machine the load changes over minutes,
        # and the fastest repeat is the one least disturbed by it.
        ours: list[float] = []
        theirs: list[float | None] = []
        byol: list[float] = []
        for r in range(args.repeats):
            if "model" not in args.skip:
                n = args.batch_size * (args.warmup + args.steps)
                synthetic = SyntheticViews(n, args.image_size, args.roi_size if orl else None)
                ours.append(_trainer_throughput(args, synthetic, tmp / f"m{r}" / "model.pt", 0))
                results["model step (synthetic tensors)"] = max(ours)
                _report(results, "model step (synthetic tensors)")
                if orl:
                    byol.append(_trainer_throughput(_as_byol(args), SyntheticViews(n, args.image_size),
                                                    tmp / f"b{r}" / "model.pt", 0))
                    results["BYOL model step (synthetic tensors)"] = max(byol)
                    _report(results, "BYOL model step (synthetic tensors)")
            if "lightly" not in args.skip:
                theirs.append(_lightly_throughput(args))
                results["lightly BYOL model step (synthetic tensors)"] = None if None in theirs else max(theirs)
                _report(results)
        if {"data", "full"} - set(args.skip):
            index = _images(tmp, args.images)
            views = "2 views + 4 RoIs, 2 decodes" if orl else "2 views"
            if "data" not in args.skip:
                dataset = _dataset(args, index, tmp)
                results[f"data only (JPEG decode + {views}, {args.workers} workers)"] = _data_throughput(args, dataset)
                _report(results)
                if orl:
                    dataset = _dataset(_as_byol(args), index, tmp)
                    results[f"BYOL data only ({args.workers} workers)"] = _data_throughput(_as_byol(args), dataset)
                    _report(results)
            if "full" not in args.skip:
                # Exactly warmup + steps batches of images: one epoch, no extra steps.
                n = min(len(index), args.batch_size * (args.warmup + args.steps))
                subset = ImageIndex(index.root, index.file_names[:n], index.ids[:n], index.widths[:n], index.heights[:n],
                                    index.sha256[:n])
                results[f"full step (JPEG + augment, {args.workers} workers)"] = _trainer_throughput(
                    args, _dataset(args, subset, tmp), tmp / "f" / "model.pt", args.workers)
                _report(results)
                if orl:
                    results[f"BYOL full step ({args.workers} workers)"] = _trainer_throughput(
                        _as_byol(args), _dataset(_as_byol(args), subset, tmp), tmp / "fb" / "model.pt", args.workers)
                    _report(results)

    rois = f", RoIs {args.roi_size}px" if orl else ""
    print(f"\n{args.method} {args.arch} {args.image_size}px{rois} batch {args.batch_size}, {args.steps} timed steps, "
          f"pipeline {args.pipeline}{' + device decode' if args.pipeline == 'device' and args.decode == 'device' else ''} "
          f"(model steps: best of {args.repeats}), "
          f"{args.device} ({_machine(args.device)}), precision {args.precision if args.device.type == 'cuda' else 'fp32'}\n")
    print("| measurement | images/s |\n|---|---|")
    for name, value in results.items():
        print(f"| {name} | {'lightly not installed' if value is None else f'{value:.1f}'} |")
    orl_ips = results.get("model step (synthetic tensors)")
    lightly_ips = results.get("lightly BYOL model step (synthetic tensors)")
    if orl_ips and lightly_ips:
        print(f"\norl / lightly model-step throughput: {orl_ips / lightly_ips:.2f}")
    if orl:
        # Throughput ratio BYOL / ORL = ORL's time per iteration relative to BYOL's (paper: ~1.4x).
        for ours_key, byol_key in zip([k for k in results if not k.startswith("BYOL")],
                                      [k for k in results if k.startswith("BYOL")]):
            if results[ours_key] and results[byol_key]:
                print(f"ORL / BYOL time per iteration, {ours_key}: {results[byol_key] / results[ours_key]:.2f}x")


if __name__ == "__main__":
    main()
