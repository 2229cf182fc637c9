#!/usr/bin/env bash
# Every check CI runs, in the order that fails fastest (run scripts/setup.sh first):
# the linter and the type checker, the core tests (seconds, no torch, no clips), then Docker and the
# integration tests on real clips with the real plugins (needs ../shared/testdata; as root it installs and
# starts Docker and builds the preprocessing images the Docker tests use).
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
echo "test: integration tests"
.venv/bin/python -m pytest -q tests/integration
