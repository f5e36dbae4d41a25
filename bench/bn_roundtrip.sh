#!/usr/bin/env bash
# Issue 20: the saved model is the evaluated one. Compress the shipped ResNet-20 to 50% MACs with
# l1+global twice (with and without evaluation), then evaluate the --no-eval output from its files.
#   bash bench/bn_roundtrip.sh   -> bench/results/bn_roundtrip.md
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
T=$(mktemp -d)
CK=checkpoints/fmnist-resnet20/model.safetensors
common=(--model resnet20 --checkpoint "$CK" --dataset fmnist --budget flops=0.5 --method l1+global --json)
prunekit compress "${common[@]}" --out "$T/eval" > "$T/eval.json"
prunekit compress "${common[@]}" --no-eval --export onnx --out "$T/noeval" > "$T/noeval.json"
prunekit eval --model resnet20 --checkpoint "$T/noeval" --dataset fmnist --json > "$T/reeval.json"
python - "$T" <<'PY'
import json, sys, pathlib
t = pathlib.Path(sys.argv[1])
printed = json.loads((t / "eval.json").read_text())["accuracy_pruned_bn"]
noeval = json.loads((t / "noeval.json").read_text())
again = json.loads((t / "reeval.json").read_text())["accuracy"]
out = pathlib.Path("bench/results/bn_roundtrip.md")
out.write_text(
    "# A compressed model is usable as saved (issue 20)\n\n`bash bench/bn_roundtrip.sh` on the 2-core CPU: "
    "shipped ResNet-20, flops=0.5, l1+global, BatchNorm re-estimated by `compress` (20 x 128 images).\n\n"
    "| run | batchnorm | test accuracy |\n|---|---|---|\n"
    f"| `compress` (evaluates, prints) | re-estimated | {printed:.2f} |\n"
    f"| `compress --no-eval --export onnx`, then `prunekit eval` of its directory | {noeval['batchnorm']} | {again:.2f} |\n\n"
    f"Difference: {abs(printed - again):.2f} points (goal: within 0.1).\n")
print(out.read_text())
PY
rm -rf "$T"
