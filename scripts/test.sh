#!/usr/bin/env bash
# Sets up (idempotent) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
INTENTREC_EXTRAS=dev,ray bash scripts/setup.sh
# tests/test_browser.py renders a report in headless Chromium (Debian's chromium package). It is
# installed here, inside the README's test command, so a fresh machine needs nothing else. If it
# cannot be installed, the suite still runs and that one test fails saying why: a skipped browser
# test would hide an HTML report that no longer renders.
if ! command -v chromium >/dev/null; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
    { $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium; } \
        || echo "warning: could not install chromium; tests/test_browser.py will fail" >&2
fi
# tests/test_vllm.py runs the production backend for real: vLLM's CPU build in its own environment
# (about 3 min and 3.5 GB the first time, then nothing). If it cannot be set up, the suite still runs
# and those tests fail saying so; they never skip.
.venv/bin/python app.py llm vllm setup \
    || echo "warning: 'app.py llm vllm setup' failed; tests/test_vllm.py will fail" >&2
exec .venv/bin/python -m pytest -q "$@"
