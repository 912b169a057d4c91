#!/bin/sh
# fail: logs a little, then exits with the code in the `exit_code` input (default 3).
code="$(sed -n 's/.*"exit_code"[ ]*:[ ]*\([0-9][0-9]*\).*/\1/p' "$GYOZA_INPUT_PATH")"
echo "fail: about to fail"
echo "fail: the input file was unusable" >&2
exit "${code:-3}"
