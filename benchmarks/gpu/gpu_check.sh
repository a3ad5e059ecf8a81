#!/usr/bin/env bash
# The prepared GPU check: every GPU path of orl in one run of at most 10 minutes on one H100 (benchmarks/gpu/gpu_check.py
# has the parts, docs/gpu.md what each proves), a JSON file and a markdown table. Needs torch, torchvision, h5py, numpy,
# scikit-learn, Pillow, tqdm and `pip install --no-deps -e .`; faiss and kornia are optional (their comparison is
# skipped with a line saying so). All data is synthetic. Exits 1 when a check fails.
#   bash benchmarks/gpu/gpu_check.sh [--out gpu_check.json]            # on a machine with one or more NVIDIA GPUs
#   bash benchmarks/gpu/gpu_check.sh --cpu-smoke [--out smoke.json]    # tiny sizes on CPU, < 2 minutes; GPU-only
#                                                                      # parts say "skipped: needs CUDA"
#   bash benchmarks/gpu/gpu_check.sh --study [--cpu-smoke]             # then the small tier's GPU study (gpu_study.py:
#                                                                      # <= 8 min on one H100; smoke mode on CPU)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="gpu_check.json"
smoke=()
study=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-smoke) smoke=(--smoke); export CUDA_VISIBLE_DEVICES=""; export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" ;;
    --out) out="$2"; shift ;;
    --study) study=1 ;;
    *) echo "gpu_check.sh: unknown argument $1 (use --cpu-smoke, --out FILE, --study)" >&2; exit 2 ;;
  esac
  shift
done
python="${PYTHON:-python}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if [ "$study" = 1 ]; then
  "$python" "$here/gpu_check.py" "${smoke[@]}" --out "$out"
  exec "$python" "$here/gpu_study.py" "${smoke[@]}"
fi
exec "$python" "$here/gpu_check.py" "${smoke[@]}" --out "$out"
