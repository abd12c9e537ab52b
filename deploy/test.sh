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
# The slowest tests are listed at the end, to keep the suite well under 20 minutes.
exec pytest -q --durations=25 "$@"
