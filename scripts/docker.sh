#!/usr/bin/env bash
# Make a Docker daemon available for the docker runner and `being images`:
# installs docker.io and debootstrap from the host's Debian mirror when missing (needs root), and starts
# dockerd in the background when no daemon answers. Safe to run again; it changes nothing that works.
set -euo pipefail
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "scripts/docker.sh: ${need[*]} missing; run it as root (sudo) or install them yourself" >&2
    exit 1
  fi
  echo "installing ${need[*]} (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if docker info >/dev/null 2>&1; then
  echo "Docker daemon is running"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "scripts/docker.sh: no Docker daemon answers; start it (sudo systemctl start docker) or run this as root" >&2
  exit 1
fi
log="${TMPDIR:-/tmp}/being-dockerd.log"
echo "starting dockerd in the background (log: $log)"
nohup dockerd >"$log" 2>&1 &
for _ in $(seq 60); do
  if docker info >/dev/null 2>&1; then echo "Docker daemon is running"; exit 0; fi
  sleep 1
done
echo "scripts/docker.sh: dockerd did not come up within 60 s; last lines of $log:" >&2
tail -n 20 "$log" >&2
exit 1
