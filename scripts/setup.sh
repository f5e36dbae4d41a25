#!/usr/bin/env bash
# Installs what prunekit needs on a fresh Debian machine; quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
APT=""
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || APT="dataset-fashion-mnist"
# the HTML report is tested in a real headless Chromium (tests/test_report.py)
{ command -v chromium && command -v chromedriver; } >/dev/null || APT="$APT chromium chromium-driver"
if [ -n "$APT" ]; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $APT >/dev/null
fi
PY=${PYTHON:-python3}
if ! $PY -c "import torch, torchvision" 2>/dev/null; then
  $PY -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
$PY -m pip install -q -e ".[test]"
