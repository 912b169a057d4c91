#!/usr/bin/env bash
# Stops the dockerd that scripts/setup.d/20-docker.sh started, and only when it was started by
# the same scripts/test.sh run (our parent): an engine that was already running, or that
# another test run started, is left alone.
set -euo pipefail

state_dir="${GYOZA_DOCKER_STATE_DIR:-/tmp/gyoza-dockerd}"
marker="$state_dir/started"
[ -f "$marker" ] || exit 0
read -r dockerd_pid owner <"$marker" || exit 0
[ "$owner" = "$PPID" ] || exit 0

if kill -0 "$dockerd_pid" 2>/dev/null; then
    echo "20-docker: stopping dockerd $dockerd_pid"
    kill -TERM "$dockerd_pid"
    for _ in $(seq 1 60); do
        kill -0 "$dockerd_pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$dockerd_pid" 2>/dev/null; then
        echo "20-docker: dockerd $dockerd_pid ignored SIGTERM for 30 s; killing it" >&2
        kill -KILL "$dockerd_pid" 2>/dev/null || true
    fi
fi
rm -f "$marker"
