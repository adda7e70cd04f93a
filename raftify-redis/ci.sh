#!/usr/bin/env bash
# redis-py against raftify-redis: a venv with redis-py and pytest (reused
# between runs), the debug server binary, pytest raftify-redis/tests/py
# (exit code 5, "no tests ran", fails). Needs python3 with venv and pip.
# Env: CARGO_TARGET_DIR (default <repo>/target), PYTHON (default python3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
python="${PYTHON:-python3}"
venv="$target/redis-venv"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "redis>=5,<9" "pytest>=7"
cargo build --quiet -p raftify-redis --bin raftify-redis
RAFTIFY_REDIS_BIN="$target/debug/raftify-redis" "$venv/bin/python" -m pytest -q "$here/tests/py"
