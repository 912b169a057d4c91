#!/usr/bin/env bash
# Headless Chromium (Debian's package) for the dashboard test.
set -euo pipefail
if command -v chromium >/dev/null; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
command -v chromium >/dev/null
