#!/usr/bin/env bash
# Brings a Debian 12 host to the point where crisp runs and its tests pass. Idempotent and quick when
# nothing changed: it installs only missing packages and rebuilds only what changed.
#   --force-build   rebuild the native addon, the monitor and the TypeScript even if up to date
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
force=0
[ "${1:-}" = "--force-build" ] && force=1
export PATH="$HOME/.cargo/bin:$PATH"

note() { printf '[setup] %s\n' "$*" >&2; }

# Debian packages: Rust crates for the native core (crates.io is not used), and the real components
# the runtime drives or the tests use.
packages=(
  librust-libc-dev librust-nix-dev librust-flate2-dev librust-zstd-dev librust-tar-dev
  librust-serde-dev librust-serde-derive-dev librust-serde-json-dev librust-sha2-dev
  containernetworking-plugins iproute2 iptables
  docker-registry umoci skopeo busybox-static zstd openssl tar util-linux attr apparmor
  runc crun
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if ! command -v cargo >/dev/null; then missing+=(cargo rustc); fi
if [ ${#missing[@]} -gt 0 ]; then
  note "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp_matches() { [ $force = 0 ] && [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

# npm dependencies, from the lockfile.
lock_hash=$(sha256sum package-lock.json | cut -d' ' -f1)
if ! stamp_matches node_modules/.crisp-lock "$lock_hash"; then
  note "installing npm dependencies"
  # `npm install` rather than `npm ci`: npm 11 rejects this lockfile's platform-specific optional
  # dependencies in `npm ci` although they are in sync; install still honours the lockfile.
  # It also rewrites the lockfile's platform-specific entries for this machine: the committed one
  # is put back, so the checkout stays clean and this stamp stays valid.
  saved_lock=$(mktemp)
  cp package-lock.json "$saved_lock"
  npm install --no-audit --no-fund --loglevel=error
  cp "$saved_lock" package-lock.json
  rm -f "$saved_lock"
  echo "$lock_hash" > node_modules/.crisp-lock
fi

# Native addon and monitor binary.
native_hash=$( (find crates -type f -print0 | sort -z | xargs -0 sha256sum; sha256sum Cargo.toml Cargo.lock .cargo/config.toml) | sha256sum | cut -d' ' -f1)
if ! stamp_matches native/.crisp-build "$native_hash" || [ ! -f native/crisp.node ] || [ ! -x target/release/crisp-monitor ]; then
  note "building the native addon and crisp-monitor"
  bash scripts/build-native.sh
  echo "$native_hash" > native/.crisp-build
fi

# TypeScript (incremental).
if [ $force = 1 ]; then rm -f dist/.tsbuildinfo; fi
npx --no-install tsc -p tsconfig.json

# `npx crisp …` in a checkout: npm links dependencies' bins, not the package's own.
[ -L node_modules/.bin/crisp ] || ln -sf ../../bin/crisp node_modules/.bin/crisp
