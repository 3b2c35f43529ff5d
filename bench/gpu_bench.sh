#!/usr/bin/env bash
# The GPU bench (bench/gpu_bench.py) on a GPU machine without network, e.g. the lent H200:
# the production profiles on CUDA at fp32, bf16 and fp16, results under --out (default bench/results).
#
#   bench/gpu_bench.sh [CARRY] [ARGS for python -m bench.gpu_bench...]
#
# CARRY (optional; needed where nnU-Net or pydicom are missing): made here with
#   python -m training.gpu_bundle bench --out CARRY        # wheels for Python 3.12, pure-Python packages, stubs
# Through the device tool (the carry and the repository travel; $OUT comes back):
#   bench/gpu_bench.sh bench_carry --out "$OUT"
# PROFILES (default "production-light-lung production") names the bench profiles to run; CI runs
#   PROFILES=random bench/gpu_bench.sh "" --device cpu --studies 1 --repeats 1 --precisions fp32,bf16
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=${1:-}
shift || true
WORK=${TMPDIR:-/tmp}/cxr-gpu-bench
if [ -n "$CARRY" ] && [ -d "$CARRY/wheels" ] && ! python3 -c 'import nnunetv2, pydicom' 2>/dev/null; then
  python3 -m pip install --quiet --no-index --no-deps --target "$WORK/site-bin" "$CARRY"/wheels/*.whl
  export PYTHONPATH="$WORK/site-bin:$CARRY/site:$CARRY/stubs${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
python3 -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "no cuda")'
for profile in ${PROFILES:-production-light-lung production}; do
  python3 -m bench.gpu_bench --profile "$profile" --cache "$WORK/packs" "$@"
done
