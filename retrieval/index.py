"""FAISS item index: ``IndexIDMap2`` over an exact inner-product index of L2-normalised item vectors.

* FAISS ids are int64 catalogue positions (0..n-1); the JSON sidecar's ``item_ids`` maps them back to
  the dataset's opaque string ids.
* Saved with ``faiss.write_index`` plus ``<file>.json`` holding the format version, model hash,
  dimension, count, metric, the item-id map and a SHA-256 of the index file. Nothing is pickled.
* Loading checks, in order: the sidecar parses; the file's SHA-256 matches (a truncated or edited
  file is :class:`CorruptIndexError` even when FAISS could still parse it); FAISS reads it; the type,
  dimension and count agree with the sidecar; the model hash matches the towers the caller loaded
  (otherwise :class:`IndexMismatchError`). Every failure is one clear error, never a crash.
* The index is exact (flat), so "full ranking" in the evaluation really ranks the whole catalogue.
  With faiss-gpu and a visible GPU, :meth:`ItemIndex.to_gpu` moves it there; faiss-cpu is the default.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import faiss
import numpy as np

from retrieval.errors import CorruptIndexError, IndexMismatchError

FORMAT_VERSION = 1


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def sidecar_path(path: str | Path) -> Path:
    return Path(str(path) + ".json")


class ItemIndex:
    def __init__(self, index: faiss.Index, item_ids: list[str], model_hash: str, dim: int):
        self.index = index
        self.item_ids = list(item_ids)
        self.model_hash = model_hash
        self.dim = dim
        self.on_gpu = False

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(cls, vectors: np.ndarray, item_ids: list[str], model_hash: str) -> ItemIndex:
        if vectors.ndim != 2 or vectors.shape[0] != len(item_ids):
            raise ValueError(f"{vectors.shape[0]} vectors for {len(item_ids)} item ids")
        dim = int(vectors.shape[1])
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        index.add_with_ids(l2_normalise(vectors), np.arange(len(item_ids), dtype=np.int64))
        return cls(index, item_ids, model_hash, dim)

    # ----- persistence -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(self._cpu_index(), str(tmp))
        os.replace(tmp, path)
        meta = {
            "format_version": FORMAT_VERSION,
            "model_hash": self.model_hash,
            "dim": self.dim,
            "n_items": len(self.item_ids),
            "metric": "inner_product",
            "normalized": True,
            "index_type": "IndexIDMap2(IndexFlatIP)",
            "faiss_version": faiss.__version__,
            "index_sha256": sha256_file(path),
            "item_ids": self.item_ids,
        }
        side = sidecar_path(path)
        side.write_text(json.dumps(meta), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path, *, expected_model_hash: str | None = None) -> ItemIndex:
        path = Path(path)
        side = sidecar_path(path)
        if not path.exists():
            raise CorruptIndexError(path, "index file is missing")
        if not side.exists():
            raise CorruptIndexError(path, f"sidecar {side.name} is missing")
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
            item_ids = list(meta["item_ids"])
            dim, n, model_hash = int(meta["dim"]), int(meta["n_items"]), str(meta["model_hash"])
            version = int(meta.get("format_version", 0))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CorruptIndexError(path, f"unreadable sidecar ({type(e).__name__}: {e})") from None
        if version != FORMAT_VERSION:
            raise IndexMismatchError(path, f"sidecar format {version}, expected {FORMAT_VERSION}")
        if meta.get("index_sha256") and sha256_file(path) != meta["index_sha256"]:
            raise CorruptIndexError(path, "file checksum differs from the sidecar (truncated or modified)")
        try:
            index = faiss.read_index(str(path))
        except Exception as e:  # faiss raises RuntimeError with a C++ message
            raise CorruptIndexError(path, f"faiss cannot read it ({str(e).splitlines()[0][:200]})") from None
        if not isinstance(index, faiss.IndexIDMap2):
            index = faiss.downcast_index(index)
            if not isinstance(index, faiss.IndexIDMap2):
                raise CorruptIndexError(path, f"expected IndexIDMap2, found {type(index).__name__}")
        if index.d != dim or index.ntotal != n or len(item_ids) != n:
            raise CorruptIndexError(path, f"index has d={index.d}, n={index.ntotal}; sidecar says d={dim}, "
                                          f"n={n} with {len(item_ids)} ids")
        if expected_model_hash is not None and model_hash != expected_model_hash:
            raise IndexMismatchError(path, f"built for model {model_hash[:12]}, the loaded towers are "
                                           f"{expected_model_hash[:12]}")
        return cls(index, item_ids, model_hash, dim)

    # ----- search ----------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product for each (normalised) query: ``(scores, ids)``, ids -1 past the end."""
        q = l2_normalise(np.atleast_2d(queries))
        k = max(1, min(int(k), len(self)))
        return self.index.search(q, k)

    def vectors(self) -> np.ndarray:
        """All item vectors in FAISS-id order (reconstructed from the flat storage)."""
        idx = self._cpu_index()
        inner = faiss.downcast_index(idx.index)
        raw = inner.reconstruct_n(0, idx.ntotal)
        ids = faiss.vector_to_array(idx.id_map)
        out = np.empty_like(raw)
        out[ids] = raw
        return out

    def _cpu_index(self) -> faiss.Index:
        return faiss.index_gpu_to_cpu(self.index) if self.on_gpu else self.index

    def to_gpu(self) -> bool:
        """Move to the first GPU when faiss-gpu and a device are present; returns whether it moved."""
        if self.on_gpu or not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
            return False
        res = faiss.StandardGpuResources()
        self.index = faiss.index_cpu_to_gpu(res, 0, self.index)
        self._gpu_res = res
        self.on_gpu = True
        return True
