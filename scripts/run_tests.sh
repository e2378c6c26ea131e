#!/usr/bin/env bash
# Runs pytest from .venv/ with the given arguments. pytest's exit code 5 ("no tests collected")
# is turned into a failure: a suite that runs nothing must not pass.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH=$PWD/.venv/bin:$PATH
python -m pytest "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
    echo "run_tests: pytest collected no tests; failing" >&2
    exit 1
fi
exit $rc
