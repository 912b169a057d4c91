#!/bin/sh
# bigout: writes outputs of about the `bytes` input (default 100000) bytes, {"blob": "xxx…"},
# from a small input: something over a server's body limit.
set -eu
bytes="$(sed -n 's/.*"bytes"[ ]*:[ ]*\([0-9][0-9]*\).*/\1/p' "$GYOZA_INPUT_PATH")"
{
    printf '{"blob":"'
    head -c "${bytes:-100000}" /dev/zero | tr '\0' 'x'
    printf '"}\n'
} >"$GYOZA_OUTPUT_PATH"
echo "wrote ${bytes:-100000} bytes of outputs"
