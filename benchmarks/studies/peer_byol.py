"""Peer learning curve: orl's BYOL against lightly's BYOL on the same demo scenes, views, budget and kNN probe.

The demo world of config.yaml (its `demo` scenes and the `bench.crops` object crops) is written once. Per seed:
(a) orl's BYOL is `orl pretrain` with config.yaml's BYOL settings and the trainer's online kNN monitor on;
(b) lightly's BYOL (lightly's BYOLProjectionHead / BYOLPredictionHead, NegativeCosineSimilarity, update_momentum,
cosine_schedule) trains in a plain loop, as lightly's examples do, on orl's BYOL views of the same images in the
same order (orl's dataset and SeededSampler), and is probed with orl's KnnMonitor on the same crops after the same
steps. Both backbones are torchvision's ResNet built under the same seed, so their step-0 values are equal.
lightly runs twice: with its own example recipe (`own`: SGD lr 0.06, momentum 0.9, wd 5e-4, constant lr, EMA
momentum cosine 0.996 -> 1 over epochs) and with orl's (`shared`: orl's optimiser, lr scaling, warmup + cosine lr,
EMA momentum cosine 0.99 -> 1 over steps), and with orl's recipe in lightly's loss units (`shared_x4`: lr x 4 and
weight decay / 4, which makes SGD take orl's exact steps on lightly's 4x smaller gradients, so only head init and
the EMA's place in the step still differ). orl's run is its own recipe, which is also the shared one, so it runs
once per seed and serves both comparisons. One JSON line per finished (impl, recipe, seed) run is appended to
--out; a rerun skips finished runs, then prints a markdown table and draws --figure.

    flock /tmp/orl-train.lock .venv/bin/python benchmarks/studies/peer_byol.py --epochs 8 \\
        --out docs/figures/peer_byol.jsonl --figure docs/figures/peer_byol.png
"""

from __future__ import annotations

import argparse
import copy
import csv
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
LIGHTLY_RECIPE = {"optimizer": "sgd", "lr": 0.06, "momentum": 0.9, "weight_decay": 5e-4, "lr_schedule": "constant",
                  "ema": "lightly cosine_schedule(epoch, epochs, 0.996, 1)"}
# Rows of the table and curves of the figure: (impl, recipe, label).
RUNS = (("orl", "own", "orl BYOL, orl recipe (= shared)"), ("lightly", "own", "lightly BYOL, lightly recipe"),
        ("lightly", "shared", "lightly BYOL, orl recipe"),
        ("lightly", "shared_x4", "lightly BYOL, orl recipe in lightly's loss units (lr x 4, wd / 4)"))
# orl's loss (2 - 2 cos, summed over both directions) is 4 + 4 x lightly's, so its gradients are 4 x lightly's: SGD
# with lr x 4 and weight decay / 4 on lightly's loss takes exactly orl's steps (momentum buffers scale by 4 too).
LOSS_SCALE = 4.0
LOSS_DEFINITION = {"orl": "(2 - 2 cos)_12 + (2 - 2 cos)_21, range 0..8",
                   "lightly": "0.5 (-cos_12 - cos_21), range -1..1"}


def study_config(smoke: bool) -> dict[str, Any]:
    """Scenes, crops and training settings: config.yaml's demo (or a tiny smoke variant of it)."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    pre, byol = cfg["pretrain"], cfg["pretrain"]["methods"]["byol"]
    out = {
        "demo": {k: cfg["demo"][k]
                 for k in ("seed", "num_train", "num_val", "image_size", "min_objects", "max_objects")},
        "crops": dict(cfg["bench"]["crops"]),
        "arch": pre["arch"], "batch_size": pre["batch_size"], "view_size": pre["image_size"],
        "workers": pre["workers"], "warmup_epochs": byol.get("warmup_epochs"), "method_args": byol["method_args"],
    }
    if smoke:
        out["demo"].update(num_train=16, num_val=8, image_size=32)
        out["crops"] = {"size": 16, "max_train_per_class": None, "max_val_per_class": None}
        out.update(batch_size=4, view_size=16, workers=0,
                   method_args={"proj_hidden": 64, "proj_dim": 32, "pred_hidden": 64})
    return out


def _orl(*args: str, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-m", "orl.cli", *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"orl {args[0]} failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}")


def prepare_data(root: Path, cfg: dict[str, Any], threads: int) -> dict[str, Path]:
    """Demo scenes, their object crops and the image index, written once under root (kept across reruns)."""
    data, crops, index = root / "data", root / "crops", root / "index.h5"
    d, c = cfg["demo"], cfg["crops"]
    if not (data / "annotations" / "instances_val.json").exists():
        _orl("demo-data", "--out", str(data), "--seed", str(d["seed"]), "--num-train", str(d["num_train"]),
             "--num-val", str(d["num_val"]), "--image-size", str(d["image_size"]), "--min-objects",
             str(d["min_objects"]), "--max-objects", str(d["max_objects"]), threads=threads)
    if not (crops / "val").is_dir():
        caps = [a for flag, key in (("--max-train-per-class", "max_train_per_class"),
                                    ("--max-val-per-class", "max_val_per_class"))
                if c.get(key) is not None for a in (flag, str(c[key]))]
        _orl("bench-crops", "--demo-root", str(data), "--out", str(crops), "--size", str(c["size"]), *caps,
             threads=threads)
    if not index.exists():
        _orl("index", "--images", str(data / "train"), "--annotations",
             str(data / "annotations" / "instances_train.json"), "--out", str(index), threads=threads)
    return {"data": data, "crops": crops, "index": index}


def train_orl(paths: dict[str, Path], cfg: dict[str, Any], seed: int, epochs: int, threads: int,
              work: Path) -> dict[str, Any]:
    """orl's BYOL through `orl pretrain` with the kNN monitor on; the curve read back from its metrics.csv."""
    out = work / f"orl-s{seed}" / "model.pt"
    cmd = ["pretrain", "--method", "byol", "--index", str(paths["index"]), "--out", str(out), "--arch", cfg["arch"],
           "--epochs", str(epochs), "--batch-size", str(cfg["batch_size"]), "--image-size", str(cfg["view_size"]),
           "--workers", str(cfg["workers"]), "--threads", str(threads), "--seed", str(seed), "--device", "cpu",
           "--checkpoint-every", str(epochs), "--keep-checkpoints", "1",
           "--method-args", *(f"{k}={v}" for k, v in cfg["method_args"].items()),
           "--knn-train-dir", str(paths["crops"] / "train"), "--knn-val-dir", str(paths["crops"] / "val"),
           "--knn-every", "1", "--knn-image-size", str(cfg["crops"]["size"])]
    if cfg["warmup_epochs"] is not None:
        cmd += ["--warmup-epochs", str(cfg["warmup_epochs"])]
    t0 = time.perf_counter()
    _orl(*cmd, threads=threads)
    seconds = time.perf_counter() - t0
    steps, knn, loss = [], [], []
    with (out.parent / "metrics.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("knn_top1"):
                steps.append(int(row["step"]))
                knn.append(float(row["knn_top1"]))
                loss.append(float(row["loss"]) if row.get("loss") else None)
    optim = torch.load(out, map_location="cpu", weights_only=True)["meta"]["optim"]
    return {"steps": steps, "knn_top1": knn, "loss": loss, "seconds": seconds,
            "optim": {**optim, "lr_schedule": "warmup_cosine", "ema": "orl cosine_momentum(step, steps, 0.99)"}}


def train_lightly(paths: dict[str, Path], cfg: dict[str, Any], recipe: str, seed: int, epochs: int,
                  monitor: Any) -> dict[str, Any]:
    """lightly's BYOL in a plain loop over orl's BYOL views (same images, order and seed); kNN after each epoch."""
    import torchvision
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.utils.scheduler import cosine_schedule
    from torch import nn
    from torch.utils.data import DataLoader

    from orl.data.datasets import SeededSampler
    from orl.data.device_augment import collate_samples
    from orl.data.image_index import load_index
    from orl.methods import BYOL, build_training_dataset
    from orl.methods.base import cosine_momentum
    from orl.models.backbones import feature_dim
    from orl.runtime import configure_determinism, seed_everything
    from orl.train.schedules import scaled_lr, warmup_cosine_lr, warmup_steps_for

    configure_determinism(torch.device("cpu"))
    hp = cfg["method_args"]
    seed_everything(seed)  # as orl's trainer before build_method: the same torchvision init of the backbone
    resnet = getattr(torchvision.models, cfg["arch"])()
    backbone = nn.Sequential(*list(resnet.children())[:-1])  # lightly's examples: the ResNet up to its avgpool
    projection = BYOLProjectionHead(feature_dim(cfg["arch"]), hp["proj_hidden"], hp["proj_dim"])
    prediction = BYOLPredictionHead(hp["proj_dim"], hp["pred_hidden"], hp["proj_dim"])
    backbone_m, projection_m = copy.deepcopy(backbone), copy.deepcopy(projection)
    deactivate_requires_grad(backbone_m)
    deactivate_requires_grad(projection_m)
    seed_everything(seed)
    criterion = NegativeCosineSimilarity()

    dataset = build_training_dataset("byol", load_index(paths["index"]), image_size=cfg["view_size"], seed=seed,
                                     pipeline="cpu")
    sampler = SeededSampler(len(dataset), cfg["batch_size"], shuffle=True, seed=seed)
    loader = DataLoader(dataset, batch_size=cfg["batch_size"], sampler=sampler, num_workers=cfg["workers"],
                        collate_fn=collate_samples, persistent_workers=cfg["workers"] > 0)
    per_epoch = sampler.steps_per_epoch
    total = epochs * per_epoch
    params = [p for m in (backbone, projection, prediction) for p in m.parameters()]
    if recipe == "own":
        optim = dict(LIGHTLY_RECIPE)
        opt = torch.optim.SGD(params, lr=optim["lr"], momentum=optim["momentum"], weight_decay=optim["weight_decay"])
        lr_at = lambda step: optim["lr"]  # noqa: E731
        ema_at = lambda step: cosine_schedule(step // per_epoch, epochs, 0.996, 1.0)  # noqa: E731
    else:  # orl's recipe, resolved as orl's trainer does (build_optimizer, warmup_cosine_lr, BYOL.after_step)
        o = BYOL.default_optim
        peak = scaled_lr(o["base_lr"], o["base_batch"], cfg["batch_size"])
        warmup_epochs = BYOL.recipe.warmup_epochs if cfg["warmup_epochs"] is None else cfg["warmup_epochs"]
        warmup = warmup_steps_for(warmup_epochs, per_epoch)
        base_m = inspect.signature(BYOL).parameters["base_momentum"].default
        optim = {"name": o["name"], "base_lr": o["base_lr"], "base_batch": o["base_batch"], "peak_lr": peak,
                 "momentum": o["momentum"], "weight_decay": o["weight_decay"], "warmup_steps": warmup,
                 "lr_schedule": "warmup_cosine", "ema": f"orl cosine_momentum(step, steps, {base_m})"}
        weight_decay = o["weight_decay"]
        if recipe == "shared_x4":
            peak, weight_decay = peak * LOSS_SCALE, weight_decay / LOSS_SCALE
            optim.update(peak_lr=peak, weight_decay=weight_decay, loss_scale=LOSS_SCALE)
        opt = torch.optim.SGD(params, lr=peak, momentum=o["momentum"], weight_decay=weight_decay)
        lr_at = lambda step: warmup_cosine_lr(step, total, peak, warmup)  # noqa: E731
        ema_at = lambda step: cosine_momentum(step, total, base_m)  # noqa: E731

    steps, knn, loss = [0], [monitor.evaluate(backbone)], [None]
    t0 = time.perf_counter()
    step = 0
    for modules in (backbone, projection, prediction, backbone_m, projection_m):
        modules.train()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        losses = []
        for batch in loader:
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            m = ema_at(step)
            update_momentum(backbone, backbone_m, m=m)
            update_momentum(projection, projection_m, m=m)
            x0, x1 = batch["view1"], batch["view2"]
            p0 = prediction(projection(backbone(x0).flatten(start_dim=1)))
            p1 = prediction(projection(backbone(x1).flatten(start_dim=1)))
            with torch.no_grad():
                z0 = projection_m(backbone_m(x0).flatten(start_dim=1))
                z1 = projection_m(backbone_m(x1).flatten(start_dim=1))
            batch_loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
            opt.zero_grad(set_to_none=True)
            batch_loss.backward()
            opt.step()
            losses.append(batch_loss.detach())
            step += 1
        epoch_loss = float(torch.stack(losses).mean())
        if not torch.isfinite(torch.tensor(epoch_loss)):
            raise FloatingPointError(f"lightly BYOL ({recipe} recipe, seed {seed}): non-finite loss in epoch {epoch}")
        steps.append(step)
        knn.append(monitor.evaluate(backbone))
        loss.append(epoch_loss)
    return {"steps": steps, "knn_top1": knn, "loss": loss, "seconds": time.perf_counter() - t0, "optim": optim}


def load_records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of earlier runs (none when the file does not exist)."""
    if not path.exists():
        return []
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON line ({e.msg})") from None
    return records


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.1f} ± {std:.1f}"


def summary_table(records: list[dict[str, Any]]) -> str:
    """Markdown: step-0, best after step 0 and final kNN top-1 per (impl, recipe), mean ± std over seeds."""
    lines = ["| implementation, recipe | seeds | steps | step 0 (random init) | best after step 0 | final | chance |",
             "|---|---|---|---|---|---|---|"]
    for impl, recipe, label in RUNS:
        rs = [r for r in records if (r["impl"], r["recipe"]) == (impl, recipe)]
        if not rs:
            continue
        lines.append(
            f"| {label} | {len(rs)} | {rs[0]['steps'][-1]} | {_mean_std([r['knn_top1'][0] for r in rs])} | "
            f"{_mean_std([max(r['knn_top1'][1:]) for r in rs])} | {_mean_std([r['knn_top1'][-1] for r in rs])} | "
            f"{rs[0]['chance']:.1f} |")
    return "\n".join(lines)


def plot_curves(records: list[dict[str, Any]], out: Path) -> None:
    """kNN top-1 against steps: seed mean and min-max band per (impl, recipe), random init and chance lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (impl, recipe, label), color in zip(RUNS, ("tab:blue", "tab:orange", "tab:green", "tab:purple")):
        rs = [r for r in records if (r["impl"], r["recipe"]) == (impl, recipe)]
        if not rs:
            continue
        steps = rs[0]["steps"]
        curves = torch.tensor([r["knn_top1"] for r in rs])
        ax.plot(steps, curves.mean(0), color=color, marker=".", label=f"{label} ({len(rs)} seeds)")
        ax.fill_between(steps, curves.min(0).values, curves.max(0).values, color=color, alpha=0.2)
    init = statistics.fmean(r["knn_top1"][0] for r in records)
    ax.axhline(init, color="k", lw=0.8, ls=":", label=f"random init (step 0): {init:.1f}")
    ax.axhline(records[0]["chance"], color="k", lw=0.8, ls="--", label=f"chance: {records[0]['chance']:.1f}")
    r0 = records[0]
    ax.set_xlabel(f"BYOL optimiser steps (batch {r0['batch_size']}, {r0['view_size']} px views, {r0['arch']})")
    ax.set_ylabel("kNN top-1 on the demo's object crops (%)")
    ax.set_title("orl's BYOL against lightly's BYOL: same scenes, views and kNN probe (band: min-max over seeds)",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    """Prepare the data, train every missing (impl, recipe, seed) run, print the table, draw the figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8, help="epochs per run (8 steps each; config.yaml trains 8)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the orl subprocess gets the same)")
    parser.add_argument("--root", type=Path, default=Path("/tmp/orl-peer-byol"), help="data and run folders")
    parser.add_argument("--out", type=Path, default=REPO / "docs/figures/peer_byol.jsonl", help="JSON lines (appended)")
    parser.add_argument("--figure", type=Path, default=REPO / "docs/figures/peer_byol.png")
    parser.add_argument("--smoke", action="store_true", help="tiny run: 16 scenes, 16 px views, batch 4")
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    try:
        import lightly
    except ImportError:
        sys.exit("peer_byol.py needs lightly: pip install -e '.[peer]' (or pip install lightly)")
    torch.set_num_threads(args.threads)
    cfg = study_config(args.smoke)
    root = args.root / ("smoke" if args.smoke else "demo")
    paths = prepare_data(root, cfg, args.threads)

    from orl.train.knn_monitor import KnnMonitor, KnnMonitorConfig

    monitor = KnnMonitor(KnnMonitorConfig(train_dir=paths["crops"] / "train", val_dir=paths["crops"] / "val",
                                          image_size=cfg["crops"]["size"]))
    same = {"epochs": args.epochs, "smoke": args.smoke}
    done = {(r["impl"], r["recipe"], r["seed"]) for r in load_records(args.out)
            if all(r.get(k) == v for k, v in same.items())}
    for seed in args.seeds:
        for impl, recipe, _ in RUNS:
            if (impl, recipe, seed) in done:
                continue
            if impl == "orl":
                run = train_orl(paths, cfg, seed, args.epochs, args.threads, root / f"e{args.epochs}")
            else:
                run = train_lightly(paths, cfg, recipe, seed, args.epochs, monitor)
            record = {"impl": impl, "recipe": recipe, "seed": seed, **same, "arch": cfg["arch"],
                      "batch_size": cfg["batch_size"], "view_size": cfg["view_size"], "heads": cfg["method_args"],
                      "demo": cfg["demo"], "crops": cfg["crops"], "classes": len(monitor.classes),
                      "train_crops": len(monitor.train_labels), "val_crops": len(monitor.val_labels),
                      "chance": 100.0 / len(monitor.classes), "loss_definition": LOSS_DEFINITION[impl],
                      "torch": torch.__version__, "lightly": lightly.__version__, "threads": args.threads,
                      **{k: (round(v, 1) if k == "seconds" else v) for k, v in run.items()}}
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with args.out.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps({k: record[k] for k in ("impl", "recipe", "seed", "seconds")}
                             | {"knn_top1": [round(v, 1) for v in record["knn_top1"]]}), flush=True)
    records = [r for r in load_records(args.out) if all(r.get(k) == v for k, v in same.items())
               and r["seed"] in args.seeds]
    print(summary_table(records))
    plot_curves(records, args.figure)


if __name__ == "__main__":
    main()
