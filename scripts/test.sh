#!/usr/bin/env bash
# The whole suite: Rust unit tests, TypeScript unit tests, then integration and end-to-end tests
# against the real kernel, CNI plugins, registry and daemon. Must run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
if [ "$(id -u)" != 0 ]; then echo "the tests need root (namespaces, mounts, cgroups)" >&2; exit 1; fi

echo "== cargo test"
cargo test --release --locked --workspace 2>&1
echo "== unit tests"
npx --no-install ava 'dist/__test__/unit/**/*.test.js'
for suite in integration e2e; do
  if compgen -G "dist/__test__/$suite/*.test.js" >/dev/null; then
    echo "== $suite tests"
    npx --no-install ava --concurrency=2 "dist/__test__/$suite/**/*.test.js"
  fi
done
