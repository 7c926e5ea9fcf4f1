#!/usr/bin/env bash
# Lints the tree with ruff and type-checks it with mypy (both set up in pyproject.toml); `make lint`,
# and `make test` before the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
"$VENV/bin/ruff" check .
"$VENV/bin/mypy"  # files and the modules not yet checked: pyproject.toml [tool.mypy]
