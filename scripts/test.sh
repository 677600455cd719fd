#!/usr/bin/env bash
# Sets up (idempotent) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
INTENTREC_EXTRAS=dev,ray bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
