#!/usr/bin/env bash
# Builds the example op images, gyoza-example/<op>:latest, FROM scratch with a static busybox
# (Debian's busybox-static). Needs a running Docker engine; reuses Docker's layer cache, so a
# second run takes a second.
#
#   echo      inputs → outputs ({"echo": inputs, "run_id": …, "greeting": $GREETING})
#   progress  INFO and PROGRESS events, then outputs
#   fail      exits with the `exit_code` input (default 3)
#   sleep     sleeps for the `seconds` input (default 600): something to cancel
#   memhog    holds the `mb` input (default 256) MB: something to OOM-kill
#   link      a hostile op: links outputs.json to the `target` input (a host path)
#   fork      a hostile op: starts the `count` input (default 200) processes, says how many
#   bigout    writes outputs of the `bytes` input (default 100000) bytes
#   chown     gives a file to user 4242: needs CAP_CHOWN back, says whether it could
#
# Usage: examples/ops/build.sh [op ...]      (all of them by default)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
busybox="${BUSYBOX:-/bin/busybox}"
if [ ! -x "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then
    echo "build.sh: $busybox is not a static busybox; apt-get install busybox-static" >&2
    exit 1
fi
# The legacy builder needs no buildx plugin, which a Debian docker.io does not ship.
export DOCKER_BUILDKIT=0

ops=("$@")
[ "${#ops[@]}" -gt 0 ] || ops=(echo progress fail sleep memhog link fork bigout chown)
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp "$busybox" "$context/busybox"
cp "$here/Dockerfile" "$context/Dockerfile"
for op in "${ops[@]}"; do
    [ -f "$here/$op.sh" ] || { echo "build.sh: no op named '$op'" >&2; exit 1; }
    cp "$here/$op.sh" "$context/op.sh"
    # Quiet unless it fails: the legacy builder prints a deprecation notice on every build.
    if ! output="$(docker build --quiet --tag "gyoza-example/$op:latest" "$context" 2>&1)"; then
        echo "$output" >&2
        exit 1
    fi
    echo "built gyoza-example/$op:latest"
done
