#!/usr/bin/env bash
# The main job on a CPU: compress the shipped Fashion-MNIST ResNet-20 to half its MACs, fine-tune it
# for one epoch with distillation, and show what changed (widths, MACs, params, accuracy).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-runs/demo}
METHOD=${METHOD:-l1+global}  # rerunning resumes (or reuses) the fine-tuning checkpointed in $OUT/$METHOD
CKPT=checkpoints/fmnist-resnet20/model.safetensors
if [ ! -f "$CKPT" ]; then  # no shipped checkpoint in this checkout: train one briefly
  CKPT=$OUT/dense/model.safetensors
  [ -f "$CKPT" ] || prunekit train --model resnet20 --dataset fmnist --epochs 1 --max-steps 120 --lr 0.1 --out "$OUT/dense"
fi
prunekit compress --model resnet20 --dataset fmnist --checkpoint "$CKPT" --budget flops=0.5 \
  --method "$METHOD" --finetune-epochs 1 --report --resume --out "$OUT/$METHOD"
