#!/usr/bin/env bash
# Runs the whole test suite, then prints coverage by package (COVERAGE=0: without coverage).
# pytest's exit code 5 ("no tests ran") is a failure here.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"
COV=()
export COVERAGE_FILE=${COVERAGE_FILE:-$PWD/.coverage}
if [[ "${COVERAGE:-1}" != 0 ]]; then
  rm -f "$COVERAGE_FILE"
  COV=(--cov=pipeline --cov=hls --cov=gateway --cov=deployments --cov-report=)
fi
"$VENV/bin/python" -m pytest -ra --durations=30 "${COV[@]}" "$@"
rc=$?
if [[ ${#COV[@]} -gt 0 && -f "$COVERAGE_FILE" ]]; then
  "$VENV/bin/python" -m tools.coverage_summary "$COVERAGE_FILE" || true
fi
if [[ $rc -eq 5 ]]; then
  echo "pytest ran no tests: treating as failure" >&2
  exit 1
fi
exit $rc
