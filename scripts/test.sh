#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs and starts what the tests need
# (scripts/setup.d/*.sh, in order), checks formatting and lints, runs every test, and stops
# what it started (scripts/teardown.d/*.sh) however it ends.
#
# Usage: scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

teardown() {
    local status=$?
    for script in scripts/teardown.d/*.sh; do
        [ -e "$script" ] || continue
        bash "$script" || echo "teardown: $script failed" >&2
    done
    exit "$status"
}
trap teardown EXIT

for script in scripts/setup.d/*.sh; do
    [ -e "$script" ] || continue
    echo "==> setup: $script"
    bash "$script"
done

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --workspace --locked "$@"
echo "==> cargo test (guest SDK and strategies, native)"
cargo test --locked --manifest-path plugins/Cargo.toml --target "$(rustc -vV | sed -n 's/^host: //p')" -p gyoza-plugin-sdk -p gyoza-strategy-priority -p gyoza-strategy-bin-packing -p gyoza-strategy-fair-share -p gyoza-strategy-affinity
echo "==> cargo test (strategy template, native)"
cargo test --locked --manifest-path examples/strategy-template/Cargo.toml
