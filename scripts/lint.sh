#!/usr/bin/env bash
# Lints the tree with ruff, checks its formatting (ruff format) and type-checks it with mypy (all set up in
# pyproject.toml); `make lint`, and `make test` before the tests. `make format` rewrites the formatting.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check . || { echo "formatting differs: run \`make format\`" >&2; exit 1; }
"$VENV/bin/mypy"  # files and the modules not yet checked: pyproject.toml [tool.mypy]
