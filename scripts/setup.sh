#!/usr/bin/env bash
# Set up convpipe in .venv/ at the repository root (idempotent: a stamp of the requirement files skips reinstalls).
# Works as root or not, on a fresh clone of a fresh machine with Python >= 3.11 and pip.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
    echo "setup: need Python >= 3.11, $PY is $("$PY" --version 2>&1)" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
STAMP=.venv/.convpipe-setup
WANT=$(cat requirements.txt requirements-nodeps.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && .venv/bin/python -c 'import convpipe.compiler, tvm, torch' 2>/dev/null; then
    echo "setup: .venv is up to date"
else
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    .venv/bin/python -m pip install -q -r requirements.txt
    .venv/bin/python -m pip install -q --no-deps -r requirements-nodeps.txt
    .venv/bin/python -m pip install -q --no-deps -e .
    echo "$WANT" > "$STAMP"
    echo "setup: installed into $ROOT/.venv"
fi
