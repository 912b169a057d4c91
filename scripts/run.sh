#!/usr/bin/env bash
# The main job: installs what it needs (Rust components, the wasm32-wasip2 target, the Docker
# engine from Debian's packages and the example op images), builds gyoza, and runs
# `gyoza up`: a server and a local worker on the embedded store in ./.gyoza with the built-in
# strategies. An API key is generated and printed when GYOZA_API_KEY is not set. Ctrl-C
# stops both.
#
# Usage: scripts/run.sh [extra `gyoza up` flags]
set -euo pipefail
cd "$(dirname "$0")/.."

for script in scripts/setup.d/00-rust.sh scripts/setup.d/10-wasm.sh scripts/setup.d/20-docker.sh; do
    bash "$script"
done
cargo build --release --locked -p gyoza-cli
exec target/release/gyoza up "$@"
