#!/usr/bin/env bash
# cargo-component, the way strategy authors build components: the end-to-end test
# tests/tests/template.rs builds examples/strategy-template with `cargo component build` (and
# with plain cargo) and loads both outputs into a running server.
#
# Pinned: the newest release, which builds with the project's Rust and whose output (a
# wasm32-wasip1 module behind its bundled preview1 adapter) loads in the host's wasmtime.
# Building it from source takes about 11 minutes, so it is installed only when
# `cargo component --version` does not already report the pinned version.
set -euo pipefail
version="0.21.1"
# Its default target. Where rustup cannot fetch it, the template test builds with
# `cargo component build --target wasm32-wasip2` instead (and says so).
if command -v rustup >/dev/null; then
    rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 ||
        rustup target add wasm32-wasip1 ||
        echo "15-cargo-component: cannot add wasm32-wasip1; cargo component will build for wasm32-wasip2"
fi
installed="$(cargo component --version 2>/dev/null || true)"
if grep -qwF "$version" <<<"$installed"; then
    echo "15-cargo-component: $installed is installed"
    exit 0
fi
echo "15-cargo-component: installing cargo-component $version (${installed:-none installed}); this takes minutes"
cargo install --locked "cargo-component@$version"
cargo component --version
