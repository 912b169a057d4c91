#!/usr/bin/env bash
# WebAssembly guests: the wasm32-wasip2 target, then the plugins workspace (built-in
# strategies, bad-plugin fixtures) and the strategy template. host/build.rs builds the same
# into the same directory, so this only front-loads the work and fails early with a clear
# message when the target cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/../.."
if command -v rustup >/dev/null; then
    rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
fi
out="${CARGO_TARGET_DIR:-$PWD/target}/wasm-plugins"
for manifest in plugins/Cargo.toml examples/strategy-template/Cargo.toml; do
    cargo build --release --locked --target wasm32-wasip2 --manifest-path "$manifest" --target-dir "$out"
done
