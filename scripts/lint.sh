#!/usr/bin/env bash
# Lints the tree with ruff (rules in pyproject.toml); `make lint`, and `make test` before the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
"$VENV/bin/ruff" check .
