#!/usr/bin/env bash
# The Rust build of the MongoDB-wire test server (SecantusDB's `secantusd-rs`, crates.io
# `secantus-mdb`, GPL-2.0, run as a separate process, never linked), for the benchmarks: it
# is several times faster than the Python server the tests use, so gyoza's own cost on the
# MongoDB path shows. Installs the pinned version once (about 15 minutes on two cores: it
# builds WiredTiger, so it needs cmake; the crate asks for Rust 1.98 and builds on 1.95 with
# --ignore-rust-version) and starts it on 127.0.0.1:${GYOZA_BENCH_MONGO_RS_PORT:-27217}
# with a fresh data directory. Not used by the test suite.
set -euo pipefail
version="0.5.3-beta.196"
port="${GYOZA_BENCH_MONGO_RS_PORT:-27217}"
root="${GYOZA_MONGO_RS_ROOT:-$HOME/.cache/gyoza/secantus-mdb-$version}"
state_dir="${TMPDIR:-/tmp}/gyoza-bench-mongo-rs"
bin="$root/bin/secantusd-rs"

if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "a server already listens on 127.0.0.1:$port; using it"
    exit 0
fi
if [ ! -x "$bin" ]; then
    if ! command -v cmake >/dev/null; then
        apt-get update -qq && apt-get install -y -qq cmake
    fi
    echo "installing secantus-mdb $version from crates.io (builds WiredTiger; takes a while)"
    cargo install secantus-mdb --version "$version" --ignore-rust-version \
        --root "$root" --target-dir "$root/build"
    rm -rf "$root/build"
fi
rm -rf "$state_dir"
mkdir -p "$state_dir"
nohup "$bin" --host 127.0.0.1 --port "$port" --storage-path "$state_dir/data" \
    >"$state_dir/server.log" 2>&1 &
echo $! >"$state_dir/pid"
for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "secantusd-rs listening on 127.0.0.1:$port (log: $state_dir/server.log)"
        exit 0
    fi
    sleep 0.2
done
echo "secantusd-rs did not start; its log:" >&2
cat "$state_dir/server.log" >&2
exit 1
