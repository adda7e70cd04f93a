#!/usr/bin/env bash
# Checks deploy/kubernetes (check.py) in a venv with PyYAML (reused between
# runs). Needs python3 with venv and pip. Env: CARGO_TARGET_DIR, PYTHON.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
venv="$target/deploy-venv"
if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "PyYAML>=6"
"$venv/bin/python" "$here/check.py"
