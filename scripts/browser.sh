#!/usr/bin/env bash
# Make Chromium available for the live-serving browser test (tests/integration/test_serve.py): installs Debian's
# chromium from the host's mirror when missing (needs root). Playwright drives it by its path; Playwright's own
# browser download is never used. Safe to run again.
set -euo pipefail
if command -v chromium >/dev/null; then
  echo "chromium is installed"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "scripts/browser.sh: chromium missing; run it as root (sudo) or install Debian's chromium yourself" >&2
  exit 1
fi
echo "installing chromium (apt)"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "chromium is installed"
