#!/usr/bin/env bash
# Builds the Node addon (native/crisp.node) and the per-pod monitor (target/release/crisp-monitor).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
mkdir -p native
# The addon's TypeScript declarations are written by hand (src/native/addon.d.ts): discard napi's.
npx --no-install napi build --release --manifest-path crates/napi/Cargo.toml --package-json-path package.json \
  --output-dir native --no-dts-header --dts ../target/napi-unused.d.ts 2>&1 | grep -v -e 'napi-derive' -e 'nodedir' >&2 || true
[ -f native/crisp.node ] || { echo "native addon build failed" >&2; exit 1; }
cargo build --release --locked -p crisp-monitor
