#!/usr/bin/env bash
# Pair quality on the real COCO photos of ../shared/data/coco128: the whole 2a-2d chain (index, proposals, features,
# kNN, roi-embed, mine-pairs, gather with --quality, figure) for crop and roi_align modes, with a RANDOM-INIT
# stage-1 BYOL (no trained model is part of this benchmark: the numbers measure the mining machinery with an
# untrained backbone, not ORL's trained one). Prints both quality JSONs as a markdown table.
#   usage: benchmarks/studies/pair_quality_coco128.sh [WORKDIR] [THREADS]     (run from the repository root)
#   env: IMAGES (first N photos, default 128), MAX_SIDE (selective search on a copy of this longer side, default
#        full resolution = paper), CROP (crop side, default 224 = paper), IMAGE_SIZE (roi_align short side, 480),
#        ARCH (resnet18), K (10), MIN_SIZE (box filter, 96 = paper), RATIO (0.1)
set -euo pipefail
COCO=${COCO128:-../shared/data/coco128}
WORK=${1:-results/bench_pair_quality_coco128}
THREADS=${2:-2}
PY=${PYTHON:-.venv/bin/python}
IMAGES=${IMAGES:-128}
CROP=${CROP:-224}
IMAGE_SIZE=${IMAGE_SIZE:-480}
ARCH=${ARCH:-resnet18}
K=${K:-10}
MIN_SIZE=${MIN_SIZE:-96}
RATIO=${RATIO:-0.1}
MAX_SIDE_FLAG=${MAX_SIDE:+--max-side $MAX_SIDE}
export OMP_NUM_THREADS=1

source "$(dirname "${BASH_SOURCE[0]}")/stage.sh"  # stage NAME MODULE ARGS...
timed() { local t=$(date +%s); "$@"; echo "  ($2: $(( $(date +%s) - t )) s)"; }

mkdir -p "$WORK"
# The first IMAGES photos (in the JSON's order) and their annotations.
"$PY" - "$COCO/annotations/instances_train2017.json" "$WORK/annotations.json" "$IMAGES" <<'EOF'
import json, sys
data = json.load(open(sys.argv[1]))
images = data["images"][: int(sys.argv[3])]
ids = {im["id"] for im in images}
data.update(images=images, annotations=[a for a in data["annotations"] if a["image_id"] in ids])
json.dump(data, open(sys.argv[2], "w"))
EOF
timed stage index orl.stages.index_images --images "$COCO/images" --annotations "$WORK/annotations.json" \
    --out "$WORK/images.h5" --threads "$THREADS"
if [ ! -f "$WORK/proposals.h5" ]; then  # the slow step: reused when the work folder already has it
    timed stage proposals orl.stages.proposals --index "$WORK/images.h5" --shard 0 --shards 1 --backend opencv \
        --seed 0 $MAX_SIDE_FLAG --threads "$THREADS" --out "$WORK/proposals/part-0.h5"
    timed stage gather-proposals orl.stages.gather_proposals --index "$WORK/images.h5" \
        --parts "$WORK/proposals/part-0.h5" --out "$WORK/proposals.h5" --filter-min-size "$MIN_SIZE"
fi
"$PY" - "$WORK/model.pt" "$ARCH" <<'EOF'
import sys, torch
from orl.methods import build_method
from orl.checkpoint import save_final
torch.manual_seed(0)  # random init, no training
save_final(sys.argv[1], build_method("byol", arch=sys.argv[2]), meta={"note": "random init, untrained"})
EOF
timed stage features orl.stages.feature_bank --model "$WORK/model.pt" --index "$WORK/images.h5" \
    --out "$WORK/features.h5" --workers 0 --threads "$THREADS" --batch-size 32
timed stage knn orl.stages.knn --features "$WORK/features.h5" --index "$WORK/images.h5" --out "$WORK/knn.h5" \
    --k "$K" --threads "$THREADS"
for mode in crop roi_align; do
    timed stage roi-embed orl.stages.roi_embed --model "$WORK/model.pt" --index "$WORK/images.h5" \
        --proposals "$WORK/proposals.h5" --shard 0 --shards 1 --mode "$mode" --crop-size "$CROP" \
        --image-size "$IMAGE_SIZE" --min-size "$MIN_SIZE" --batch-size 64 --workers 0 --threads "$THREADS" \
        --out "$WORK/$mode/roi_embeddings/part-0.h5"
    timed stage mine-pairs orl.stages.mine_pairs --index "$WORK/images.h5" --knn "$WORK/knn.h5" \
        --embeddings "$WORK/$mode/roi_embeddings/part-0.h5" --ratio "$RATIO" --out "$WORK/$mode/pairs/part-0.h5"
    timed stage gather-correspondence orl.stages.gather_correspondence --index "$WORK/images.h5" \
        --knn "$WORK/knn.h5" --proposals "$WORK/proposals.h5" --embeddings "$WORK/$mode/roi_embeddings/part-0.h5" \
        --pairs "$WORK/$mode/pairs/part-0.h5" --out "$WORK/$mode/correspondence.h5" \
        --quality "$WORK/$mode/pair_quality.json"
    stage plot-correspondence orl.stages.plot_correspondence --correspondence "$WORK/$mode/correspondence.h5" \
        --index "$WORK/images.h5" --out "$WORK/$mode/correspondence.png" --num 8 --seed 0
done
"$PY" - "$WORK" "$ARCH" "$CROP" "$IMAGE_SIZE" "${MAX_SIDE:-full}" <<'EOF'
import json, sys
work, arch, crop, size, side = sys.argv[1:]
q = {m: json.load(open(f"{work}/{m}/pair_quality.json")) for m in ("crop", "roi_align")}
c = q["crop"]
print(f"\n{c['num_images']} coco128 images, {c['num_gt_objects']} GT objects; backbone: RANDOM-INIT BYOL {arch} "
      f"(untrained); kNN K={c['k']} on its features; proposals: OpenCV fast, max side {side}; "
      f"crop {crop} px / roi_align short side {size}; seed {c['seed']}.")
print(f"mean kept boxes {c['mean_kept_boxes']:.1f}, kept boxes covering an object {c['kept_boxes_covering_object']:.3f}, "
      f"image pairs sharing a GT category {c['image_pairs_sharing_gt_category']:.3f}\n")
print("| pairs | mean pairs / (q,k) | both boxes cover an object | same category | same category given both |")
print("|---|---|---|---|---|")
f = lambda v: "-" if v is None else f"{v:.3f}"
for m, r in q.items():
    for name in ("mined", "random", "random_expected"):
        s = r[name]
        print(f"| {m}: {name} | {r['mean_pairs_per_image_pair']:.2f} | {f(s['both_cover_object'])} | "
              f"{f(s['same_category'])} | {f(s['same_category_given_both'])} |")
EOF
