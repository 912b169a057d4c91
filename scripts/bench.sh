#!/usr/bin/env bash
# Every benchmark of BENCHMARKS.md, one command: builds the release server and harness, runs
# each server scenario (gyoza-bench all: creation, claims, memory, claim-to-start against
# `docker run`, and claims on the MongoDB-wire test server), then the wasm-vs-native strategy
# benchmark. Needs what scripts/test.sh sets up (dockerd with the example images, the
# MongoDB-wire server on 127.0.0.1:27117); run `bash scripts/test.sh` once before, or the
# setup scripts it names. Prints the figures; asserts nothing about them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p gyoza-cli -p gyoza-bench
mongo="${GYOZA_BENCH_MONGO_URL:-mongodb://127.0.0.1:27117}"
status=0
target="${CARGO_TARGET_DIR:-target}"
GYOZA_BIN="$PWD/$target/release/gyoza"
[ "${target:0:1}" = / ] && GYOZA_BIN="$target/release/gyoza"
export GYOZA_BIN
"${GYOZA_BIN%/gyoza}/gyoza-bench" all --store "$mongo" || status=$?
cargo bench --locked -p gyoza-host --bench strategy || status=$?
exit "$status"
