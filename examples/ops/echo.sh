#!/bin/sh
# echo: turns inputs into outputs. Writes {"echo": <inputs>, "run_id": ..., "greeting": $GREETING}
# so a test can see what the container was given (inputs, run id, and one environment variable).
set -eu
inputs="$(cat "$GYOZA_INPUT_PATH")"
echo 'GYOZA_EVENT {"type":"INFO","msg":"echoing inputs"}'
printf '{"echo":%s,"run_id":"%s","greeting":"%s"}\n' \
    "$inputs" "$GYOZA_RUN_ID" "${GREETING:-}" >"$GYOZA_OUTPUT_PATH"
echo "wrote $GYOZA_OUTPUT_PATH"
