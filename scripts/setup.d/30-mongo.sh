#!/usr/bin/env bash
# A MongoDB-wire-protocol server for the MongoDB store's tests: SecantusDB (PyPI, GPL-2.0,
# run as a separate process, never linked), on 127.0.0.1:${GYOZA_TEST_MONGO_PORT:-27117} with
# a fresh data directory. No real mongod can be installed on these machines.
set -euo pipefail
port="${GYOZA_TEST_MONGO_PORT:-27117}"
state_dir="${TMPDIR:-/tmp}/gyoza-test-mongo"

if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "a server already listens on 127.0.0.1:$port; using it"
    exit 0
fi
if ! command -v secantusd-py >/dev/null; then
    echo "installing SecantusDB from PyPI"
    python3 -m pip install --quiet --disable-pip-version-check SecantusDB
fi
rm -rf "$state_dir"
mkdir -p "$state_dir"
nohup secantusd-py --host 127.0.0.1 --port "$port" --storage-path "$state_dir/data" \
    --log-level WARNING >"$state_dir/server.log" 2>&1 &
echo $! >"$state_dir/pid"
for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "SecantusDB listening on 127.0.0.1:$port (log: $state_dir/server.log)"
        exit 0
    fi
    sleep 0.2
done
echo "SecantusDB did not start; its log:" >&2
cat "$state_dir/server.log" >&2
exit 1
