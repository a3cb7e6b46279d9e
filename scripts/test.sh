#!/usr/bin/env bash
# Run the test suite from a fresh machine: install what is missing (Docker
# Engine included), build the images, lint, then the tests against the real engine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
.venv/bin/fleetd images build
.venv/bin/ruff check fleetd cli tests bench
.venv/bin/mypy
exec .venv/bin/pytest -p no:cacheprovider "$@"
