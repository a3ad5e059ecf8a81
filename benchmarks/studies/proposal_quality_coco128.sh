#!/usr/bin/env bash
# Proposal quality on the 128 real COCO photos of ../shared/data/coco128 (paper settings: OpenCV fast selective
# search at full resolution; §2d filter with min size 96): recall of ground-truth boxes at IoU 0.5 / 0.7 by the raw
# and by the filtered boxes, boxes per image. ~5 min on 2 cores.
#   usage: benchmarks/studies/proposal_quality_coco128.sh [WORKDIR] [THREADS]     (run from the repository root)
set -euo pipefail
COCO=${COCO128:-../shared/data/coco128}
WORK=${1:-results/bench_proposals_coco128}
THREADS=${2:-2}
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1

source "$(dirname "${BASH_SOURCE[0]}")/stage.sh"  # stage NAME MODULE ARGS...

mkdir -p "$WORK"
stage index orl.stages.index_images --images "$COCO/images" --annotations "$COCO/annotations/instances_train2017.json" \
    --out "$WORK/images.h5" --threads "$THREADS"
start=$(date +%s)
stage proposals orl.stages.proposals --index "$WORK/images.h5" --shard 0 --shards 1 --backend opencv --seed 0 \
    --threads "$THREADS" --out "$WORK/proposals/part-0.h5"
echo "proposals: $(( $(date +%s) - start )) s wall for 128 images on $THREADS worker(s)"
stage gather-proposals orl.stages.gather_proposals --index "$WORK/images.h5" --parts "$WORK/proposals/part-0.h5" \
    --out "$WORK/proposals.h5" --filter-min-size 96 --filter-max-aspect 3 --filter-iou 0.5 --filter-max-boxes 100
cat "$WORK/proposals_quality.json"
