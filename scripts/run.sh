#!/usr/bin/env bash
# The main job: builds gyoza and runs a server on the embedded store in ./.gyoza.
# An API key is generated (and printed) when GYOZA_API_KEY is not set. Ctrl-C stops it.
#
# Usage: scripts/run.sh [extra `gyoza server start` flags]
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.d/00-rust.sh
cargo build --release --locked -p gyoza-cli

if [ -z "${GYOZA_API_KEY:-}" ]; then
    GYOZA_API_KEY="gyoza-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    export GYOZA_API_KEY
    echo "Generated API key (send it as X-API-Key): $GYOZA_API_KEY"
fi
echo "Server: http://${GYOZA_HOST:-127.0.0.1}:${GYOZA_PORT:-5555}  (data in ${GYOZA_DATA_DIR:-./.gyoza})"
exec target/release/gyoza server start "$@"
