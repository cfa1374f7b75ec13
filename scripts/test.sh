#!/usr/bin/env bash
# The project's checks: lint, types, then the whole test suite (unit + integration on SmolLM2).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
ruff check autoinfer tests scripts
ruff format --check autoinfer tests scripts
mypy
# The slowest tests, so a CI log shows where its time went (CI must stay under 60 minutes).
pytest -q -rs --durations=25
