#!/usr/bin/env bash
# Hostile input: a bounded property-based run of schemathesis (PyPI) against a real server's
# /openapi.json with the API key. Fails on any 5xx answer and on any answer that does not
# match the documented schema.
#
# Usage: scripts/schemathesis.sh [path to the gyoza binary] [max examples per operation]
set -euo pipefail
cd "$(dirname "$0")/.."
gyoza="${1:-target/debug/gyoza}"
examples="${2:-${GYOZA_SCHEMATHESIS_EXAMPLES:-10}}"

if ! command -v schemathesis >/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check 'schemathesis>=4,<5'
fi

work="$(mktemp -d)"
key="schemathesis-$RANDOM$RANDOM"
GYOZA_API_KEY="$key" "$gyoza" server start --port 0 --data-dir "$work/data" >"$work/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
url=""
for _ in $(seq 1 100); do
    url="$(grep -o 'listening on http://[0-9.:]*' "$work/server.log" | head -n1 | sed 's/listening on //' || true)"
    [ -n "$url" ] && break
    sleep 0.2
done
[ -n "$url" ] || { echo "the server did not start:" >&2; cat "$work/server.log" >&2; exit 1; }

# The event stream is excluded: it answers by streaming until the run ends, by design.
schemathesis run "$url/openapi.json" \
    --header "X-API-Key: $key" \
    --checks not_a_server_error,response_schema_conformance \
    --max-examples "$examples" \
    --generation-deterministic \
    --request-timeout 10 \
    --exclude-path-regex 'events/stream$' \
    --no-color
