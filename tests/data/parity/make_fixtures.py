"""Regenerate the golden fixtures of tests/test_parity_authors.py by running the AUTHORS' code (not orl's).

    .venv/bin/python tests/data/parity/make_fixtures.py --orl-repo /tmp/parity-scratch/ORL \
        --orl-commit <sha> --mmcv-repo /tmp/parity-scratch/mmcv-1.0.3 --mmcv-commit <sha>

--orl-repo is a checkout of github.com/Jiahao000/ORL, --mmcv-repo one of github.com/open-mmlab/mmcv at v1.0.3 (the
version ORL's requirements pin). Their modules are loaded from those paths with minimal sys.modules stand-ins for
the registries and mmcv pieces they import at module level; no line of their code is copied here. Only the inputs
and the authors' outputs are written (small .npz / .json files next to this script). Deterministic: fixed seeds,
CPU, float32/float64 as the authors' code computes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

OUT = Path(__file__).resolve().parent


class _Registry:
    """Stand-in for OpenSelfSup's / mmcv's Registry: register_module with or without a call, returns the class."""

    def __init__(self, name: str = "") -> None:
        self.name = name

    def register_module(self, cls=None, **kwargs):
        return (lambda c: c) if cls is None else cls


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def _package(name: str, path: Path) -> types.ModuleType:
    """A package whose __init__ is NOT run (it would import the whole framework); submodules load from `path`."""
    mod = _module(name)
    mod.__path__ = [str(path)]
    return mod


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def install_stubs(orl_repo: Path, mmcv_repo: Path) -> dict[str, types.ModuleType]:
    """Load the authors' modules used by the fixtures; returns them by short name."""
    oss = orl_repo / "openselfsup"
    _module("mmcv", __path__=[])
    _module("mmcv.utils", Registry=_Registry)
    _module("mmcv.cnn", normal_init=lambda *a, **k: None, kaiming_init=lambda *a, **k: None)
    _module("mmcv.parallel", is_module_wrapper=lambda model: hasattr(model, "module"))
    _package("mmcv.runner", mmcv_repo / "mmcv" / "runner")
    _package("mmcv.runner.hooks", mmcv_repo / "mmcv" / "runner" / "hooks")
    hook = _load("mmcv.runner.hooks.hook", mmcv_repo / "mmcv" / "runner" / "hooks" / "hook.py")
    sys.modules["mmcv.runner"].Hook = hook.Hook
    lr_updater = _load("mmcv.runner.hooks.lr_updater", mmcv_repo / "mmcv" / "runner" / "hooks" / "lr_updater.py")

    _package("openselfsup", oss)
    _module("openselfsup.utils", build_from_cfg=lambda cfg, registry: (lambda img: torch.zeros(1)),
            print_log=lambda *a, **k: None)
    for pkg in ("datasets", "models", "hooks"):
        _package(f"openselfsup.{pkg}", oss / pkg)
        _module(f"openselfsup.{pkg}.registry", DATASETS=_Registry(), PIPELINES=_Registry(), MODELS=_Registry(),
                HEADS=_Registry(), HOOKS=_Registry(), DATASOURCES=_Registry())
    _module("openselfsup.datasets.builder", build_datasource=lambda cfg: cfg)
    _module("openselfsup.datasets.utils", to_numpy=np.asarray)
    _module("openselfsup.models.builder", build_neck=lambda cfg: cfg, build_backbone=lambda cfg: cfg,
            build_head=lambda cfg: cfg)
    _package("openselfsup.models.heads", oss / "models" / "heads")
    _package("openselfsup.datasets.data_sources", oss / "datasets" / "data_sources")
    _module("openselfsup.datasets.data_sources.utils", McLoader=None)
    mods = {
        "ds_correspondence": _load("openselfsup.datasets.correspondence", oss / "datasets" / "correspondence.py"),
        "ds_orl": _load("openselfsup.datasets.orl", oss / "datasets" / "orl.py"),
        "src_orl": _load("openselfsup.datasets.data_sources.coco_orl_json",
                         oss / "datasets" / "data_sources" / "coco_orl_json.py"),
        "m_correspondence": _load("openselfsup.models.correspondence", oss / "models" / "correspondence.py"),
        "m_orl": _load("openselfsup.models.orl", oss / "models" / "orl.py"),
        "head": _load("openselfsup.models.heads.latent_pred_head", oss / "models" / "heads" / "latent_pred_head.py"),
        "byol_hook": _load("openselfsup.hooks.byol_hook", oss / "hooks" / "byol_hook.py"),
        "lr_updater": lr_updater,
    }
    return mods


def _csr(rows: list[np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
    values = np.concatenate([np.asarray(r, dtype=np.int64).reshape(-1, width) for r in rows])
    return values, offsets


# ---------------------------------------------------------------------------------------------------- kNN (2b)


def notebook_knn_lines(orl_repo: Path) -> tuple[str, str]:
    """The retrieval lines of tools/coco_knn_image_retrieval.ipynb: (similarity + topk, drop of column 0)."""
    nb = json.loads((orl_repo / "tools" / "coco_knn_image_retrieval.ipynb").read_text())
    for cell in nb["cells"]:
        lines = "".join(cell["source"]).splitlines()
        sim = [ln.strip() for ln in lines if ln.strip().startswith("similarity = torch.mm(")]
        top = [ln.strip() for ln in lines if ln.strip().startswith("I = torch.topk(")]
        drop = [ln.strip() for ln in lines if ln.strip().startswith("I = I[:,1:]")]
        if sim and top and drop:
            return sim[0] + "\n" + top[0], drop[0]
    raise SystemExit("tools/coco_knn_image_retrieval.ipynb: retrieval lines not found")


def make_knn(orl_repo: Path) -> None:
    top_src, drop_src = notebook_knn_lines(orl_repo)
    rng = np.random.default_rng(0)
    n, d, keys = 48, 16, 5
    unique = rng.standard_normal((n, d)).astype(np.float32)
    dup = unique.copy()
    dup[30] = dup[3]  # exact duplicate images: the authors' "drop column 0" may drop the twin instead of self
    dup[11] = dup[10]
    out = {"keys": np.int64(keys), "top_src": np.array(top_src), "drop_src": np.array(drop_src)}
    for name, feats in (("unique", unique), ("dup", dup)):
        # ExtractorHook(normalize=True) writes the bank L2-normalised; global_forward normalises the queries.
        bank = F.normalize(torch.from_numpy(feats), dim=1)
        ns = {"torch": torch, "query_feats": bank.clone(), "feats_bank": bank, "keys": keys}
        exec(top_src, ns)
        top = ns["I"].numpy().copy()
        exec(drop_src, ns)
        out[f"{name}_features"] = feats
        out[f"{name}_top"] = top
        out[f"{name}_knn"] = ns["I"].numpy()
        if name == "unique":  # float32 vs float64 order must not hinge on a near-tie
            sims = np.sort((bank @ bank.T).numpy(), axis=1)[:, ::-1][:, : keys + 2]
            assert np.diff(-sims, axis=1).min() > 1e-5, "near-tie in the unique kNN fixture"
    np.savez_compressed(OUT / "knn.npz", **out)


# ---------------------------------------------------------------------------------------------- box filter (2d)


def make_box_filter(mods: dict) -> None:
    box_filter = mods["ds_correspondence"].box_filter
    rng = np.random.default_rng(1)
    images = []
    for _ in range(12):
        m = int(rng.integers(5, 60))
        w = rng.integers(4, 260, m)
        h = rng.integers(4, 260, m)
        x = rng.integers(0, 200, m)
        y = rng.integers(0, 200, m)
        images.append(np.stack([x, y, w, h], axis=1))
    images.append(np.array([[0, 0, 10, 10], [5, 5, 12, 90], [1, 1, 30, 2]]))  # nothing passes: first raw box kept
    # duplicates and exact-threshold overlaps: IoU exactly 0.5 is kept (the test is "> thr")
    images.append(np.array([[0, 0, 100, 100], [0, 0, 100, 100], [0, 0, 100, 50], [50, 0, 100, 100], [0, 0, 200, 100]]))
    cases = [
        {"min_size": 96, "max_ratio": 3, "topN": 100, "max_iou_thr": 0.5},  # the authors' correspondence config
        {"min_size": 20, "max_ratio": 3, "topN": 5, "max_iou_thr": 0.5},
        {"min_size": 40, "max_ratio": 2, "topN": 10, "max_iou_thr": 0.3},
        {"min_size": 10, "max_ratio": 4, "topN": 3, "max_iou_thr": 0.7},
    ]
    values, offsets = _csr(images, 4)
    out = {"boxes": values, "box_offsets": offsets}
    for c, params in enumerate(cases):
        kept = [np.asarray(box_filter([list(map(int, b)) for b in boxes], **params)) for boxes in images]
        out[f"case{c}_kept"], out[f"case{c}_offsets"] = _csr(kept, 4)
    np.savez_compressed(OUT / "box_filter.npz", **out)
    (OUT / "box_filter.json").write_text(json.dumps({"cases": cases}, indent=1) + "\n")


# ---------------------------------------------------------------------------------- correspondence pairs (2d)


class _FeatureBackbone(nn.Module):
    """The 'backbone' returns its input: patches are given as (B, D, 1, 1) embeddings, so the pool is the identity."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x]


def make_correspondence(mods: dict) -> None:
    cls = mods["m_correspondence"].Correspondence
    rng = np.random.default_rng(2)
    d, k = 32, 3
    cases = [(25, [30, 7, 18], 0.1), (9, [12, 9, 4], 0.1), (37, [40, 33, 5], 0.1), (16, [10, 20, 16], 0.25)]
    out: dict[str, np.ndarray] = {}
    meta = []
    for c, (bq, bks, ratio) in enumerate(cases):
        model = cls.__new__(cls)
        nn.Module.__init__(model)
        model.backbone, model.knn_image_num, model.topk_bbox_ratio = _FeatureBackbone(), k, ratio
        emb_q = rng.standard_normal((bq, d)).astype(np.float32)
        emb_k = [rng.standard_normal((b, d)).astype(np.float32) for b in bks]
        box_q = np.stack([np.arange(bq), np.arange(bq) + 1000, np.full(bq, 96), np.full(bq, 97)], axis=1)
        box_k = [np.stack([np.arange(b), np.arange(b) + 2000 + 100 * j, np.full(b, 98), np.full(b, 99)], axis=1)
                 for j, b in enumerate(bks)]
        kwargs = {}
        for j in range(k):
            kwargs[f"{j}nn_img"] = torch.from_numpy(emb_k[j]).view(1, bks[j], d, 1, 1)
            kwargs[f"{j}nn_bbox"] = torch.from_numpy(box_k[j]).view(1, bks[j], 4)
        res = model.forward_test(torch.from_numpy(emb_q).view(1, bq, d, 1, 1), torch.from_numpy(box_q).view(1, bq, 4),
                                 **kwargs)
        assert np.array_equal(res["intra_bbox"].numpy(), box_q)
        out[f"case{c}_emb_q"], out[f"case{c}_box_q"] = emb_q, box_q
        for j in range(k):
            out[f"case{c}_emb_k{j}"], out[f"case{c}_box_k{j}"] = emb_k[j], box_k[j]
            out[f"case{c}_pairs{j}"] = res[f"{j}nn_bbox"].numpy()
            # float32 (authors) vs float64 (orl) similarities must not decide a near-tie at the cut
            s = np.sort((F.normalize(torch.from_numpy(emb_q), dim=1) @ F.normalize(torch.from_numpy(emb_k[j]), dim=1).T)
                        .numpy().ravel())[::-1][: len(res[f"{j}nn_bbox"]) + 1]
            assert np.diff(-s).min() > 1e-5, "near-tie in the correspondence fixture"
        meta.append({"num_query_boxes": bq, "num_neighbour_boxes": bks, "topk_bbox_ratio": ratio})
    np.savez_compressed(OUT / "correspondence.npz", **out)
    (OUT / "correspondence.json").write_text(json.dumps({"cases": meta}, indent=1) + "\n")


# ------------------------------------------------------------------------------------------------ ORL loss (3)


class _ListOut(nn.Module):
    """Pool + linear; returns [out] like OpenSelfSup necks."""

    def __init__(self, layer: nn.Module, pool: bool) -> None:
        super().__init__()
        self.layer, self.pool = layer, pool

    def forward(self, x):
        x = x[0] if isinstance(x, list) else x
        if self.pool:
            x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return [self.layer(x)]


def make_orl_loss(mods: dict) -> None:
    ORL, Head = mods["m_orl"].ORL, mods["head"].LatentPredictHead
    g = torch.Generator().manual_seed(3)
    n, c, d = 6, 12, 8
    proj = torch.randn(d, c, generator=g, dtype=torch.float64)
    target_proj = torch.randn(d, c, generator=g, dtype=torch.float64)
    preds = {t: torch.randn(d, d, generator=g, dtype=torch.float64) for t in ("global", "intra", "inter")}
    views = {key: torch.randn(n, c, 2, 2, generator=g, dtype=torch.float64)
             for key in ("view1", "view2", "intra1", "intra2", "inter1", "inter2")}
    weights = {"global": 1.0, "intra": 0.5, "inter": 2.0}

    def linear(w: torch.Tensor) -> nn.Linear:
        layer = nn.Linear(w.shape[1], w.shape[0], bias=False).double()
        layer.weight.data.copy_(w)
        return layer

    model = ORL.__new__(ORL)
    nn.Module.__init__(model)
    model.online_net = _ListOut(linear(proj), pool=True)
    model.target_net = _ListOut(linear(target_proj), pool=True)
    for p in model.target_net.parameters():
        p.requires_grad = False
    for term, attr in (("global", "global_head"), ("intra", "local_intra_head"), ("inter", "local_inter_head")):
        setattr(model, attr, Head(_ListOut(linear(preds[term]), pool=False)))
    model.global_loss_weight, model.local_intra_loss_weight, model.local_inter_loss_weight = weights.values()
    img = torch.stack([views["view1"], views["view2"]], dim=1)
    ipatch = torch.stack([views["intra1"], views["intra2"]], dim=1)
    kpatch = torch.stack([views["inter1"], views["inter2"]], dim=1)
    losses = model.forward_train(img, ipatch, kpatch)
    total = sum(losses.values())
    total.backward()
    out = {f"in_{k}": v.numpy() for k, v in views.items()}
    out.update(proj=proj.numpy(), target_proj=target_proj.numpy())
    out.update({f"pred_{t}": w.numpy() for t, w in preds.items()})
    out.update({k: v.detach().numpy() for k, v in losses.items()})
    out["grad_proj"] = model.online_net.layer.weight.grad.numpy()
    for term, attr in (("global", "global_head"), ("intra", "local_intra_head"), ("inter", "local_inter_head")):
        out[f"grad_pred_{term}"] = getattr(model, attr).predictor.layer.weight.grad.numpy()
    np.savez_compressed(OUT / "orl_loss.npz", **out)
    (OUT / "orl_loss.json").write_text(json.dumps({"weights": weights}, indent=1) + "\n")


# --------------------------------------------------------------------------------- RoI sampling and jitter (3)


def make_jitter(mods: dict) -> None:
    """Exact: aug_bbox on recorded random() streams. Distribution: the authors' full draw (neighbour, box, pair)."""
    ds = mods["ds_orl"]
    rng = np.random.default_rng(4)
    shift, scale, ratio = (-0.5, 0.5), (0.5, 2.0), (0.5, 2.0)
    boxes, sizes, results = [], [], []
    for s in range(400):
        img_w, img_h = int(rng.integers(64, 640)), int(rng.integers(64, 640))
        w, h = int(rng.integers(2, img_w + 1)), int(rng.integers(2, img_h + 1))
        x, y = int(rng.integers(0, img_w - w + 1)), int(rng.integers(0, img_h - h + 1))
        # aug_bbox draws uniform(a, b) = a + (b - a) * random(), four per try in this order; the test rebuilds
        # that stream with random.Random(s).
        random.seed(s)
        res = ds.aug_bbox(SimpleNamespace(size=(img_w, img_h)), [x, y, w, h], shift, scale, ratio, 0.5, 200)
        boxes.append([x, y, w, h])
        sizes.append([img_w, img_h])
        results.append(list(res))
    np.savez_compressed(OUT / "jitter_exact.npz", boxes=np.array(boxes), sizes=np.array(sizes),
                        seeds=np.arange(len(boxes)), results=np.array(results))

    # Distribution of one ORLDataset.__getitem__ draw: the data source picks the neighbour, the dataset the box, its
    # jitter and the pair; TF.resized_crop is replaced by a recorder of the four crops.
    src_cls = mods["src_orl"].COCOORLJson
    src = src_cls.__new__(src_cls)
    intra = [[10, 20, 100, 80], [200, 40, 60, 150], [0, 0, 320, 240], [150, 150, 30, 30], [40, 100, 120, 60]]
    pairs = [[[10, 20, 100, 80, 1, 1, 50, 50], [0, 0, 320, 240, 2, 2, 60, 60]],
             [[200, 40, 60, 150, 3, 3, 70, 70], [10, 20, 100, 80, 4, 4, 80, 80], [40, 100, 120, 60, 5, 5, 90, 90]],
             [[150, 150, 30, 30, 6, 6, 40, 40]]]
    from PIL import Image
    img = Image.new("RGB", (320, 240))
    src.__dict__.update(topk_knn_image=3, knn_image_ids=[[1, 2, 3]], memcached=False, fns=["q", "n1", "n2", "n3"],
                        intra_bboxes=[intra], knn_bbox_pairs=[pairs])
    mods["src_orl"].Image = SimpleNamespace(open=lambda fn: SimpleNamespace(convert=lambda mode: img, fn=fn))
    crops: list[list[int]] = []
    ds.TF = SimpleNamespace(resized_crop=lambda im, top, left, height, width, size, interpolation=None:
                            crops.append([left, top, width, height]) or im)
    dataset = ds.ORLDataset.__new__(ds.ORLDataset)
    dataset.__dict__.update(data_source=src, image_pipeline1=lambda im: torch.zeros(1),
                            image_pipeline2=lambda im: torch.zeros(1), patch_pipeline1=lambda im: torch.zeros(1),
                            patch_pipeline2=lambda im: torch.zeros(1), patch_size=96, interpolation=2, shift=shift,
                            scale=scale, ratio=ratio, iou_thr=0.5, attempt_num=200, prefetch=False)
    random.seed(12345)
    draws = 6000
    for _ in range(draws):
        dataset[0]
    c = np.array(crops).reshape(draws, 4, 4)  # per draw: intra1, intra2, inter1, inter2
    np.savez_compressed(OUT / "roi_sampling.npz", crops=c.astype(np.int32), intra=np.array(intra),
                        pairs=np.concatenate([np.array(p) for p in pairs]),
                        pair_offsets=np.cumsum([0] + [len(p) for p in pairs]), img_size=np.array([320, 240]))


# --------------------------------------------------------------------------------- schedules: momentum and lr


def make_schedules(mods: dict) -> None:
    hook = mods["byol_hook"].BYOLHook(end_momentum=1.0, update_interval=1)
    used: list[float] = []
    module = SimpleNamespace(base_momentum=0.99, momentum=0.99)
    module.momentum_update = lambda: used.append(module.momentum)
    max_iters = 37
    runner = SimpleNamespace(model=SimpleNamespace(module=module), max_iters=max_iters, iter=0)
    for it in range(max_iters):
        runner.iter = it
        hook.before_train_iter(runner)
        hook.after_train_iter(runner)
    # One EMA step of the authors' _momentum_update on small parameters.
    ema_cls = mods["m_orl"].ORL
    g = torch.Generator().manual_seed(5)
    model = ema_cls.__new__(ema_cls)
    nn.Module.__init__(model)
    model.online_net, model.target_net = nn.Linear(5, 3), nn.Linear(5, 3)
    for p in list(model.online_net.parameters()) + list(model.target_net.parameters()):
        p.data.copy_(torch.randn(p.shape, generator=g))
    before = {f"{n}": p.detach().clone().numpy() for n, p in model.target_net.named_parameters()}
    online = {f"{n}": p.detach().clone().numpy() for n, p in model.online_net.named_parameters()}
    model.momentum = used[7]
    model._momentum_update()
    after = {f"{n}": p.detach().clone().numpy() for n, p in model.target_net.named_parameters()}
    np.savez_compressed(OUT / "momentum.npz", momentum=np.array(used), max_iters=np.int64(max_iters),
                        ema_momentum=np.float64(used[7]),
                        **{f"target_before_{n}": v for n, v in before.items()},
                        **{f"online_{n}": v for n, v in online.items()},
                        **{f"target_after_{n}": v for n, v in after.items()})

    # mmcv 1.0.3 CosineAnnealingLrUpdaterHook with ORL's lr_config, per iteration, on a stand-in runner.
    lr_cls = mods["lr_updater"].CosineAnnealingLrUpdaterHook
    out = {}
    for name, epochs, epoch_len in (("short", 12, 5), ("paper", 800, 3)):
        hook = lr_cls(min_lr=0.0, warmup="linear", warmup_iters=4, warmup_ratio=0.0001, warmup_by_epoch=True)
        group = {"lr": 0.4}
        runner = SimpleNamespace(optimizer=SimpleNamespace(param_groups=[group]), data_loader=range(epoch_len),
                                 max_epochs=epochs, max_iters=epochs * epoch_len, epoch=0, iter=0)
        hook.before_run(runner)
        lrs = []
        for e in range(epochs):
            runner.epoch = e
            hook.before_train_epoch(runner)
            for i in range(epoch_len):
                runner.iter = e * epoch_len + i
                hook.before_train_iter(runner)
                lrs.append(group["lr"])
        out[f"{name}_lr"] = np.array(lrs)
        out[f"{name}_shape"] = np.array([epochs, epoch_len])
    np.savez_compressed(OUT / "lr.npz", base_lr=np.float64(0.4), warmup_epochs=np.int64(4), **out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orl-repo", type=Path, required=True, help="checkout of github.com/Jiahao000/ORL")
    ap.add_argument("--orl-commit", required=True, help="its commit, recorded in meta.json")
    ap.add_argument("--mmcv-repo", type=Path, required=True, help="checkout of github.com/open-mmlab/mmcv at v1.0.3")
    ap.add_argument("--mmcv-commit", required=True, help="its commit, recorded in meta.json")
    args = ap.parse_args()
    probes = ((args.orl_repo, "openselfsup/models/orl.py"), (args.mmcv_repo, "mmcv/runner/hooks/lr_updater.py"))
    for repo, probe in probes:
        if not (repo / probe).is_file():
            raise SystemExit(f"{repo}: no {probe}; pass a checkout of the right repository")
    torch.set_num_threads(1)
    mods = install_stubs(args.orl_repo, args.mmcv_repo)
    make_knn(args.orl_repo)
    make_box_filter(mods)
    make_correspondence(mods)
    make_orl_loss(mods)
    make_jitter(mods)
    make_schedules(mods)
    meta = {"orl_repo": "https://github.com/Jiahao000/ORL", "orl_commit": args.orl_commit,
            "mmcv_repo": "https://github.com/open-mmlab/mmcv", "mmcv_commit": args.mmcv_commit,
            "torch": torch.__version__, "numpy": np.__version__}
    (OUT / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
