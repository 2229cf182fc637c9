#!/usr/bin/env bash
# Every check CI runs, in the order that fails fastest (run scripts/setup.sh first):
# the linter and the type checker, the core tests (seconds, no torch, no clips), then Docker and the
# integration tests on real clips with the real plugins (needs ../shared/testdata; as root it installs and
# starts Docker and builds the preprocessing images the Docker tests use, and the trainer's CUDA image beside
# the integration tests).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "test: ruff"
.venv/bin/ruff check .
echo "test: mypy"
.venv/bin/mypy
echo "test: core tests"
.venv/bin/python -m pytest -q -n auto tests/core
bash scripts/docker.sh
bash scripts/browser.sh
.venv/bin/being images build -q --preprocess
# The trainer's CUDA image (5 GB; 20 to 40 minutes on two cores, most of it compiling gsplat for the GPUs)
# builds beside the integration tests; its own test runs once it is built. BEING_TEST_CUDA_IMAGE=0 leaves it
# out (its test then skips, except under CI=true, where it fails).
if [ "${BEING_TEST_CUDA_IMAGE:-1}" = 0 ]; then
  echo "test: integration tests (BEING_TEST_CUDA_IMAGE=0: without the trainer's CUDA image)"
  .venv/bin/python -m pytest -q tests/integration
  exit 0
fi
cuda_log="${TMPDIR:-/tmp}/being-cuda-image.log"
echo "test: building the trainer's CUDA image in the background (log: $cuda_log)"
.venv/bin/being images build -q trainer-gaussian-avatar --variant cuda >"$cuda_log" 2>&1 &
cuda_build=$!
trap 'kill "$cuda_build" 2>/dev/null || true' EXIT
echo "test: integration tests"
.venv/bin/python -m pytest -q -m "not cuda_image" tests/integration
echo "test: waiting for the trainer's CUDA image"
if ! wait "$cuda_build"; then
  echo "building the trainer's CUDA image failed; last lines of $cuda_log:" >&2
  tail -n 40 "$cuda_log" >&2
  exit 1
fi
echo "test: the trainer's CUDA image"
.venv/bin/python -m pytest -q -m cuda_image tests/integration
