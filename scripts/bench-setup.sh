#!/usr/bin/env bash
# Installs what `npm run bench` needs beyond the regular set-up: containerd and runc to compare
# against, the CNI plugins both runtimes use, the local registry serving the images, and a C
# compiler for the pause image. Idempotent: installs only missing packages; never starts or
# enables the system containerd service.
set -euo pipefail

packages=(containerd runc containernetworking-plugins docker-registry gcc libc6-dev iproute2 util-linux)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "[bench-setup] missing packages (${missing[*]}); run as root to install them" >&2
  exit 1
fi
echo "[bench-setup] installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d answers "do not start" to invoke-rc.d: installing containerd must not start a
# system-wide daemon on /run/containerd that would compete with the one the benchmark runs.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod 0755 "$policy"
  created_policy=1
fi
cleanup() { if [ $created_policy = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
