#!/usr/bin/env bash
# Set up (deploy/setup.sh), then the whole check: ruff, mypy --strict, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
mypy
exec pytest -q "$@"
