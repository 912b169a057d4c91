#!/usr/bin/env bash
# The Docker engine the end-to-end tests run op containers on, and the example op images.
#
# Idempotent: installs docker.io and busybox-static (Debian) only when missing, starts dockerd
# in the background only when no engine answers, and (re)builds the example images, which is
# quick because Docker caches each layer.
#
# When this script starts dockerd it records the engine's pid together with the pid of the
# scripts/test.sh that ran it (our parent), so that scripts/teardown.d/20-docker.sh stops the
# engine only at the end of that same test run, never one that someone else started.
set -euo pipefail
cd "$(dirname "$0")/../.."

state_dir="${GYOZA_DOCKER_STATE_DIR:-/tmp/gyoza-dockerd}"
mkdir -p "$state_dir"

# ldd fails on a static binary: a dynamically linked busybox cannot run FROM scratch.
busybox_is_static() { [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; }

need_install=()
command -v dockerd >/dev/null || need_install+=(docker.io)
busybox_is_static || need_install+=(busybox-static)
if [ "${#need_install[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "20-docker: need ${need_install[*]} but not root; install them and rerun" >&2
        exit 1
    fi
    echo "20-docker: installing ${need_install[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_install[@]}" >/dev/null
fi

engine_up() { docker info >/dev/null 2>&1; }

if engine_up; then
    echo "20-docker: a Docker engine is already running"
else
    if [ "$(id -u)" -ne 0 ]; then
        echo "20-docker: no Docker engine answers and only root can start dockerd" >&2
        exit 1
    fi
    log="$state_dir/dockerd.log"
    echo "20-docker: starting dockerd (log: $log)"
    # setsid: the engine must outlive this script and not get the terminal's signals.
    setsid dockerd --host=unix:///var/run/docker.sock >"$log" 2>&1 </dev/null &
    dockerd_pid=$!
    for _ in $(seq 1 120); do
        engine_up && break
        if ! kill -0 "$dockerd_pid" 2>/dev/null; then
            echo "20-docker: dockerd exited; its log follows" >&2
            tail -n 40 "$log" >&2
            exit 1
        fi
        sleep 0.5
    done
    if ! engine_up; then
        echo "20-docker: dockerd did not answer within 60 s; its log follows" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
    echo "$dockerd_pid $PPID" >"$state_dir/started"
    echo "20-docker: dockerd $dockerd_pid is up"
fi

bash examples/ops/build.sh
