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
