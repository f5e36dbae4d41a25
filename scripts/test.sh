#!/usr/bin/env bash
# The whole test suite, from a fresh machine: install, then pytest. The report test's Chromium
# screenshot lands in runs/screenshots/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PRUNEKIT_SCREENSHOT_DIR=${PRUNEKIT_SCREENSHOT_DIR:-$PWD/runs/screenshots}
exec ${PYTHON:-python3} -m pytest -q -p no:cacheprovider "$@"
