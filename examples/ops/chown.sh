#!/bin/sh
# chown: an op that needs a capability back: gives a file of its own to user 4242, which
# takes CAP_CHOWN (every op container starts with all capabilities dropped). Writes
# {"chowned": true} when it could, {"chowned": false} when it was refused.
owned="$(dirname "$GYOZA_OUTPUT_PATH")/owned"
touch "$owned"
if chown 4242 "$owned" 2>/dev/null; then
    echo '{"chowned": true}' >"$GYOZA_OUTPUT_PATH"
else
    echo "chown: refused (no CAP_CHOWN)"
    echo '{"chowned": false}' >"$GYOZA_OUTPUT_PATH"
fi
