#!/bin/sh
# progress: reports INFO and PROGRESS events while it works, then writes its outputs.
set -eu
echo "progress: starting"
echo 'GYOZA_EVENT {"type":"INFO","msg":"warming up"}'
for pct in 10 40 70 100; do
    echo "GYOZA_EVENT {\"type\":\"PROGRESS\",\"msg\":$pct}"
    sleep 0.2
done
echo 'GYOZA_EVENT {"type":"INFO","msg":"done"}'
inputs="$(cat "$GYOZA_INPUT_PATH")"
printf '{"steps":4,"echo":%s}\n' "$inputs" >"$GYOZA_OUTPUT_PATH"
