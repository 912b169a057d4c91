#!/bin/sh
# sleep: reports that it started, then sleeps for the `seconds` input (default 600), so that
# there is time to cancel it.
seconds="$(sed -n 's/.*"seconds"[ ]*:[ ]*\([0-9][0-9]*\).*/\1/p' "$GYOZA_INPUT_PATH")"
echo "GYOZA_EVENT {\"type\":\"INFO\",\"msg\":\"sleeping ${seconds:-600} s\"}"
sleep "${seconds:-600}"
echo '{"slept":true}' >"$GYOZA_OUTPUT_PATH"
