#!/usr/bin/env bash
# schemathesis (PyPI) for the hostile-input test (cli/tests/schemathesis.rs).
set -euo pipefail
command -v schemathesis >/dev/null && exit 0
python3 -m pip install --quiet --disable-pip-version-check 'schemathesis>=4,<5'
