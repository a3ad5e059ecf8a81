#!/usr/bin/env bash
# The prepared GPU check: every GPU path of orl in one short run (benchmarks/gpu/gpu_check.py has the parts), a JSON
# file and a table. Needs torch, torchvision, h5py, numpy, scikit-learn, Pillow, tqdm and `pip install --no-deps -e .`;
# faiss is optional (its comparison is skipped with a line saying so). All data is synthetic.
#   bash benchmarks/gpu/gpu_check.sh [--out gpu_check.json]            # on a machine with one NVIDIA GPU
#   bash benchmarks/gpu/gpu_check.sh --cpu-smoke [--out smoke.json]    # every part at tiny sizes on CPU, < 2 minutes
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="gpu_check.json"
smoke=()
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-smoke) smoke=(--smoke); export CUDA_VISIBLE_DEVICES=""; export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" ;;
    --out) out="$2"; shift ;;
    *) echo "gpu_check.sh: unknown argument $1 (use --cpu-smoke, --out FILE)" >&2; exit 2 ;;
  esac
  shift
done
python="${PYTHON:-python}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$python" "$here/gpu_check.py" "${smoke[@]}" --out "$out"
