#!/usr/bin/env bash
# Image locality on real workers (BENCHMARKS.md, "Policies on a real cluster"): `priority`
# against `affinity`, each worker with a Docker engine of its own that pulls from a registry.
#
# Sets up, all on this machine and all removed afterwards: two images of SIZE_MB (default
# 200) of random data each over the example sleep image, a registry serving them
# (bench/registry.py: the pull half of the Registry HTTP API v2), and ENGINES (default 4)
# extra dockerd instances with empty image stores, each on a bridge of its own (gybrN,
# 172.29.N.1/24): an extra engine with `--bridge=none` deletes the main engine's docker0.
# Then builds the release server and harness and runs `gyoza-bench affinity`.
#
# Usage: scripts/bench-affinity.sh [gyoza-bench affinity flags: --runs N --seconds S --every-ms M]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.d/00-rust.sh
bash scripts/setup.d/10-wasm.sh
bash scripts/setup.d/20-docker.sh
engines="${ENGINES:-4}"
size_mb="${SIZE_MB:-200}"
port="${REGISTRY_PORT:-5055}"
work="$(mktemp -d /tmp/gyoza-bench-affinity.XXXXXX)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    sleep 2
    for pid in "${pids[@]}"; do
        kill -9 "$pid" 2>/dev/null || true
    done
    umount "$work"/engine-*/data/overlay2/*/merged 2>/dev/null || true
    for i in $(seq "$engines"); do
        ip link del "gybr$i" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

images=()
for name in a b; do
    image="127.0.0.1:$port/gyoza-bench/big-$name:latest"
    mkdir -p "$work/build-$name"
    head -c "${size_mb}M" /dev/urandom >"$work/build-$name/blob"
    printf 'FROM gyoza-example/sleep:latest\nCOPY blob /blob\n' >"$work/build-$name/Dockerfile"
    docker build -q -t "$image" "$work/build-$name" >/dev/null
    docker save "$image" -o "$work/$name.tar"
    rm -rf "$work/build-$name"
    images+=("$image")
done

python3 bench/registry.py "$port" "$work/a.tar" "$work/b.tar" >"$work/registry.log" 2>&1 &
pids+=($!)
for _ in $(seq 600); do
    grep -q listening "$work/registry.log" && break
    sleep 0.1
done
grep -q listening "$work/registry.log" || { cat "$work/registry.log"; exit 1; }

socks=()
for i in $(seq "$engines"); do
    dir="$work/engine-$i"
    mkdir -p "$dir"
    ip link add name "gybr$i" type bridge
    ip addr add "172.29.$i.1/24" dev "gybr$i"
    ip link set "gybr$i" up
    dockerd --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/pid" \
        -H "unix://$dir/sock" --bridge="gybr$i" --iptables=false --ip6tables=false \
        >"$dir/log" 2>&1 &
    pids+=($!)
    socks+=("$dir/sock")
done
for sock in "${socks[@]}"; do
    for _ in $(seq 300); do
        docker -H "unix://$sock" info >/dev/null 2>&1 && break
        sleep 0.1
    done
done

cargo build --release --locked -p gyoza-cli -p gyoza-bench
target="${CARGO_TARGET_DIR:-$PWD/target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
GYOZA_BIN="$target/release/gyoza" "$target/release/gyoza-bench" affinity \
    --engines "$(IFS=,; echo "${socks[*]}")" --images "$(IFS=,; echo "${images[*]}")" "$@"
