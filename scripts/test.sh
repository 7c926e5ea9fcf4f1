#!/usr/bin/env bash
# Runs the whole test suite. pytest's exit code 5 ("no tests ran") is a failure here.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"
"$VENV/bin/python" -m pytest -ra --durations=30 "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
  echo "pytest ran no tests: treating as failure" >&2
  exit 1
fi
exit $rc
