#!/usr/bin/env bash
# The GPU measurements, in parts that each fit one 10-minute call of the device machine.
# Before the call, on the build machine (both folders are git-ignored and travel with `carry`):
#   mkdir -p .data/fmnist wheels && cp /usr/share/datasets/fashion-mnist/*.gz .data/fmnist/
#   pip download --no-deps -d wheels "torch-pruning>=1.6,<1.7" safetensors
# Then:  bash bench/gpu_session.sh train|chip|suite     (results under $OUT, then commit to bench/results/)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PRUNEKIT_DATA=$PWD/.data/fmnist
python -m pip install -q --no-deps wheels/*.whl
python -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || export PYTHONPATH=$PWD/src
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
case "${1:-train}" in
  train) python bench/train_dense.py --model resnet56 --out "$OUT/train_resnet56_h100" ;;  # goal: >= 94.0% in <= 150 s
  chip)  python bench/chip_speed.py --device cuda --naive full --out "$OUT/chip_speed_h100" ;;  # goal: <= 10 s
  suite) python bench/suite.py --checkpoint "$OUT/train_resnet56_h100_run/model.safetensors" \
           --results "$OUT" --stop-after 520 ;;  # rerun until every run is recorded
  *) echo "usage: bench/gpu_session.sh train|chip|suite" >&2; exit 2 ;;
esac
