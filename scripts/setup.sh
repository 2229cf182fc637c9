#!/usr/bin/env bash
# Create .venv with the Being core, every plugin in plugins/, the Docker runner (containers/), the example
# plugin and the checkers (ruff, mypy), ready to run and test.
# Uses the host's pip configuration (index, find-links, CA bundle) as it is; writes nothing outside .venv.
# pip's and the build backends' chatter goes to .venv/setup.log, shown only when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
log=.venv/setup.log
: > "$log"
step() {
  echo "setup: $1"
  shift
  if ! "$@" >>"$log" 2>&1; then
    echo "setup failed: $*" >&2
    echo "last lines of $log:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
}
step "pip" .venv/bin/python -m pip install --upgrade pip
# Pin torch first: an unpinned torch would pull a multi-GB CUDA build where a CPU wheel is all we need here.
step "torch (CPU build)" .venv/bin/python -m pip install "torch==2.13.0"
plugins=()
for dir in plugins/*/; do plugins+=(-e "$dir"); done
step "being-core, its plugins, being-docker, the example plugin, ruff and mypy" \
  .venv/bin/python -m pip install -e ".[test]" "${plugins[@]}" -e containers -e examples/teeth-bright \
  "ruff>=0.8" "mypy>=1.13" types-PyYAML
.venv/bin/being plugins --strict > /dev/null
echo "Being is installed in .venv (activate with: source .venv/bin/activate; details: $log)"
