"""How much bf16 extraction changes the kNN lists and the mined RoI pairs, against fp32, on coco128.

    PYTHONPATH=src .venv/bin/python benchmarks/speed/bf16_mining_overlap.py --images ../shared/data/coco128

Runs the same network twice over the same inputs, once in fp32 and once under CPU bf16 autocast (the GPU stages'
`precision: bf16`): the feature bank (online backbone + projector, 224 px centre crop) and the RoI embeddings
(pooled backbone of each box cropped and resized to --crop-size). Boxes are the COCO ground-truth boxes with both
sides >= --min-box px (at most --max-boxes per image), standing in for the filtered proposals. Prints the mean
overlap |N_fp32 & N_bf16| / K of the kNN lists and, for every (image, neighbour) of the fp32 lists, the mean overlap
of the top-T pairs mined from fp32 vs bf16 RoI embeddings (T = max(1, int(0.1 B_q)), as the stage).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from orl.data.augment import eval_transform, normalize_steps
from orl.data.images import open_rgb
from orl.methods import build_method
from orl.mining.correspondence import mine_query
from orl.mining.knn import knn
from orl.mining.roi_embed import crop_rois
from orl.models.backbones import global_pool


def _boxes(annotations: Path, min_box: int, max_boxes: int) -> dict[str, np.ndarray]:
    doc = json.loads(annotations.read_text())
    names = {im["id"]: im["file_name"] for im in doc["images"]}
    per: dict[str, list] = {}
    for a in doc["annotations"]:
        x, y, w, h = a["bbox"]
        if w >= min_box and h >= min_box:
            per.setdefault(names[a["image_id"]], []).append([int(x), int(y), int(w), int(h)])
    return {k: np.asarray(v[:max_boxes], dtype=np.int64) for k, v in per.items()}


@torch.no_grad()
def _run(model, inputs: list[torch.Tensor], bf16: bool) -> list[np.ndarray]:
    out = []
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for fn, x in inputs:
            out.append(fn(x).float().numpy())
    return out


def pair_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """|pairs(a) & pairs(b)| / T for two (T, 2) arrays of (query box, neighbour box) ids."""
    return len(set(map(tuple, a.tolist())) & set(map(tuple, b.tolist()))) / len(a)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=Path, default=Path("../shared/data/coco128"))
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--crop-size", type=int, default=224)
    p.add_argument("--min-box", type=int, default=32)
    p.add_argument("--max-boxes", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_method("byol", arch=args.arch, proj_hidden=1024, proj_dim=256, pred_hidden=1024).eval()
    boxes = _boxes(args.images / "annotations" / "instances_train2017.json", args.min_box, args.max_boxes)
    files = sorted(boxes)
    tf, norm = eval_transform(224), torch.nn.Sequential(*normalize_steps())
    embed = model.embed
    pooled = lambda x: global_pool(model.backbone(x))  # noqa: E731 - the RoI embedding of the stage
    inputs, roi_inputs = [], []
    for f in files:
        img = open_rgb(args.images / "images" / f)
        inputs.append((embed, tf(img)[None]))
        crops = torch.from_numpy(crop_rois(img, boxes[f], args.crop_size)).permute(0, 3, 1, 2)
        roi_inputs.append((pooled, norm(crops)))
    start = time.perf_counter()
    feats = {bf: np.concatenate(_run(model, inputs, bf)) for bf in (False, True)}
    rois = {bf: _run(model, roi_inputs, bf) for bf in (False, True)}
    seconds = time.perf_counter() - start
    nn = {bf: knn(feats[bf], args.k, route="numpy")[0] for bf in (False, True)}
    knn_overlap = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(nn[False], nn[True])]))
    same_lists = float(np.mean([np.array_equal(a, b) for a, b in zip(nn[False], nn[True])]))
    pair_overlaps = []
    for q, neigh in enumerate(nn[False]):
        mined = {bf: mine_query(rois[bf][q], [rois[bf][int(j)] for j in neigh], 0.1) for bf in (False, True)}
        pair_overlaps += [pair_overlap(a[0], b[0]) for a, b in zip(mined[False], mined[True])]
    print(f"{len(files)} images, {sum(len(b) for b in boxes.values())} boxes, {args.arch} (random init, seed 0), "
          f"crops {args.crop_size} px, K={args.k}; {seconds:.0f} s of extraction")
    print(f"kNN list overlap bf16 vs fp32: {knn_overlap:.4f} (identical ordered lists: {same_lists:.3f})")
    print(f"mined top-T pair overlap bf16 vs fp32 (fp32 neighbours): {np.mean(pair_overlaps):.4f} "
          f"over {len(pair_overlaps)} (image, neighbour) rows")
    cos = np.sum(feats[False] / np.linalg.norm(feats[False], axis=1, keepdims=True)
                 * feats[True] / np.linalg.norm(feats[True], axis=1, keepdims=True), axis=1)
    print(f"feature cosine fp32 vs bf16: min {cos.min():.5f}, mean {cos.mean():.5f}")


if __name__ == "__main__":
    main()
