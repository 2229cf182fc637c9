#!/usr/bin/env bash
# Create .venv with the Being core, every plugin in plugins/ and the example plugin, ready to run and test.
# Uses the host's pip configuration (index, find-links, CA bundle) as it is; writes nothing outside .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# Pin torch first: an unpinned torch would pull a multi-GB CUDA build where a CPU wheel is all we need here.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
plugins=()
for dir in plugins/*/; do plugins+=(-e "$dir"); done
.venv/bin/python -m pip install --quiet -e ".[test,docker]" "${plugins[@]}" -e examples/teeth-bright
.venv/bin/being plugins --json > /dev/null
echo "Being is installed in .venv (activate with: source .venv/bin/activate)"
