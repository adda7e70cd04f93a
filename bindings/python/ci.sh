#!/usr/bin/env bash
# Builds the raftify Python package and runs its checks:
#   1. a venv with maturin, pytest and mypy (reused between runs),
#   2. a wheel built with maturin (debug profile: much faster to build) and
#      installed into the venv, as `pip install ./bindings/python` would,
#   3. mypy.stubtest: the type stubs against the built module, and mypy on
#      the example and the tests (the stubs as a user's code sees them),
#   4. pytest bindings/python/tests (exit code 5, "no tests ran", fails).
# Needs only rustup's toolchain, python3 (>= 3.9, with venv) and pip.
# Env: CARGO_TARGET_DIR (default <repo>/target), RAFTIFY_PY_PROFILE
# (default dev; "release" for an optimized build), PYTHON (default python3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
profile="${RAFTIFY_PY_PROFILE:-dev}"
python="${PYTHON:-python3}"
venv="$target/py-venv"
wheels="$target/py-wheels"
start=$(date +%s)

step() { echo "== bindings/python: $* ($(( $(date +%s) - start ))s)"; }

step "venv $venv"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
vpy="$venv/bin/python"
"$vpy" -m pip install --quiet --disable-pip-version-check \
    "maturin>=1.9.4,<2" "pytest>=7" "mypy>=1.8"

step "maturin build --profile $profile"
rm -rf "$wheels"
export CARGO_TARGET_DIR="$target"
"$venv/bin/maturin" build --quiet --strip --profile "$profile" \
    --manifest-path "$here/Cargo.toml" --interpreter "$vpy" --out "$wheels"
"$vpy" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall \
    "$wheels"/raftify-*.whl

# Run from a directory where no source tree shadows the installed package.
cd "$target"

step "mypy.stubtest raftify"
"$vpy" -m mypy.stubtest raftify --allowlist "$here/stubtest-allowlist.txt"

step "mypy examples tests (the stubs as users see them)"
"$vpy" -m mypy --no-error-summary --cache-dir "$target/py-mypy-cache" "$here/examples" "$here/tests"

step "pytest"
set +e
"$vpy" -m pytest "$here/tests" -p no:cacheprovider -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "bindings/python: pytest collected no tests" >&2
    exit 1
fi
step "done (pytest exit $rc)"
exit "$rc"
