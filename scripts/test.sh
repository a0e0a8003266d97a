#!/usr/bin/env bash
# Run the whole test suite in .venv/ (after scripts/setup.sh). Exits non-zero when a test fails or none ran.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest -ra "$@"
rc=$?
if [ $rc -eq 5 ]; then
    echo "test: no tests were collected" >&2
    exit 1
fi
exit $rc
