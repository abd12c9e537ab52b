#!/usr/bin/env bash
# Set up (deploy/setup.sh), then the whole check: ruff, mypy --strict, the
# import-layer contracts (lint-imports, see [tool.importlinter] in pyproject.toml),
# pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
mypy
lint-imports
exec pytest -q "$@"
