#!/usr/bin/env bash
# Every benchmark of BENCHMARKS.md, one command: sets up what they need (the wasm target,
# dockerd with the example images, the MongoDB-wire test server: the same scripts/setup.d
# scripts the tests use, left running afterwards), builds the release server and harness,
# runs each server scenario (gyoza-bench all: creation, claims, memory, claim-to-start
# against `docker run`, fair-share on three real workers, claims on the MongoDB-wire server),
# then the scale table (gyoza-bench scale: 1M runs, 1,000 workers), claims on the Rust build
# of the MongoDB-wire server (scripts/mongo-rs.sh), affinity's pulls avoided
# (scripts/bench-affinity.sh) and the wasm-vs-native strategy benchmark for bin-packing,
# fair-share and affinity.
# Prints the figures; asserts nothing about them. GYOZA_BENCH_MONGO_URL points the MongoDB
# scenario at another server (then none is started).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.d/00-rust.sh
bash scripts/setup.d/10-wasm.sh
bash scripts/setup.d/20-docker.sh
if [ -z "${GYOZA_BENCH_MONGO_URL:-}" ]; then
    bash scripts/setup.d/30-mongo.sh
fi
mongo="${GYOZA_BENCH_MONGO_URL:-mongodb://127.0.0.1:${GYOZA_TEST_MONGO_PORT:-27117}}"
cargo build --release --locked -p gyoza-cli -p gyoza-bench
target="${CARGO_TARGET_DIR:-$PWD/target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
export GYOZA_BIN="$target/release/gyoza"
status=0
"$target/release/gyoza-bench" all --store "$mongo" || status=$?
"$target/release/gyoza-bench" scale || status=$?
# The MongoDB path on the Rust build of the wire server (its own install; see the script).
if bash scripts/mongo-rs.sh; then
    rs="mongodb://127.0.0.1:${GYOZA_BENCH_MONGO_RS_PORT:-27217}"
    "$target/release/gyoza-bench" claims --store "$rs" --runs 1000 --workers 10 || status=$?
    "$target/release/gyoza-bench" claim-latency --store "$rs" --runs 2000 --workers 10 || status=$?
else
    status=1
fi
# Image locality with an engine per worker and a registry (its own set-up; see the script).
bash scripts/bench-affinity.sh --seconds 2 --every-ms 1000 --runs 40 || status=$?
for strategy in bin-packing fair-share affinity; do
    GYOZA_BENCH_STRATEGY=$strategy cargo bench --locked -p gyoza-host --bench strategy || status=$?
done
exit "$status"
