#!/usr/bin/env bash
# Stops the SecantusDB server that scripts/setup.d/30-mongo.sh started (and only that one).
set -euo pipefail
state_dir="${TMPDIR:-/tmp}/gyoza-test-mongo"
if [ -f "$state_dir/pid" ]; then
    kill "$(cat "$state_dir/pid")" 2>/dev/null || true
    rm -f "$state_dir/pid"
fi
