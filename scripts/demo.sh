#!/usr/bin/env bash
# The main job on a CPU: train a ResNet-20 briefly on Fashion-MNIST, then compress it to half its
# MACs and show what changed (widths, MACs, params, accuracy before/after).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-runs/demo}
if [ ! -f "$OUT/dense/model.safetensors" ]; then
  prunekit train --model resnet20 --dataset fmnist --epochs 1 --max-steps 120 --lr 0.1 --out "$OUT/dense"
fi
prunekit compress --model resnet20 --dataset fmnist --checkpoint "$OUT/dense/model.safetensors" \
  --budget flops=0.5 --method l1+global --out "$OUT/pruned" --eval-images 2000
