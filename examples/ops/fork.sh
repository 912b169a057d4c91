#!/bin/sh
# fork: a hostile op, for the tests: tries to start the `count` input (default 200) background
# processes, then writes how many are running as {"started": n} and ends them. Counting and
# killing use shell builtins only, so they work when no process can be forked any more.
count="$(sed -n 's/.*"count"[ ]*:[ ]*\([0-9][0-9]*\).*/\1/p' "$GYOZA_INPUT_PATH")"
# A child shell forks until it is refused (then it gives up); its sleeps keep running.
sh -c "i=0; while [ \$i -lt ${count:-200} ]; do i=\$((i + 1)); sleep 60 & done" 2>/dev/null
# A child still on its way to `sleep` is a `sh` for now (on a busy machine all of them may
# be): both count, this shell itself does not.
started=0
for proc in /proc/[0-9]*; do
    pid="${proc#/proc/}"
    [ "$pid" = "$$" ] && continue
    if read -r name <"$proc/comm" 2>/dev/null && { [ "$name" = sleep ] || [ "$name" = sh ]; }; then
        started=$((started + 1))
        kill "$pid" 2>/dev/null
    fi
done
echo "fork: $started of ${count:-200} started"
echo "{\"started\": $started}" >"$GYOZA_OUTPUT_PATH"
