"""FAISS index persistence: round trip, corrupt files, mismatched model hash — each a clear error."""

from __future__ import annotations

import json
import shutil

import faiss
import numpy as np
import pytest

from retrieval.errors import CorruptIndexError, IndexMismatchError
from retrieval.index import ItemIndex, l2_normalise, sidecar_path


@pytest.fixture()
def vectors():
    rng = np.random.default_rng(0)
    return rng.normal(size=(300, 16)).astype(np.float32)


@pytest.fixture()
def saved(tmp_path, vectors):
    ids = [f"sku-{i:04d}" for i in range(len(vectors))]
    idx = ItemIndex.build(vectors, ids, model_hash="abc123")
    path = idx.save(tmp_path / "items.faiss")
    return path, idx, ids


def test_round_trip_preserves_vectors_ids_and_results(saved, vectors):
    path, idx, ids = saved
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["dim"] == 16 and meta["n_items"] == 300 and meta["model_hash"] == "abc123"
    assert meta["item_ids"] == ids and meta["metric"] == "inner_product"
    loaded = ItemIndex.load(path, expected_model_hash="abc123")
    assert isinstance(loaded.index, faiss.IndexIDMap2) and loaded.item_ids == ids
    np.testing.assert_allclose(loaded.vectors(), l2_normalise(vectors), atol=1e-6)
    q = vectors[:5] + 0.01
    s1, i1 = idx.search(q, 7)
    s2, i2 = loaded.search(q, 7)
    assert (i1 == i2).all() and i1.dtype == np.int64
    np.testing.assert_allclose(s1, s2)
    # exact search: equals the brute-force cosine ranking
    brute = np.argsort(-(l2_normalise(q) @ l2_normalise(vectors).T), axis=1)[:, :7]
    assert (i2 == brute).all()
    assert (i2[:, 0] == np.arange(5)).all()  # each query's nearest item is the one it was perturbed from


def test_garbage_index_file_is_a_clear_error(saved):
    path, _, _ = saved
    path.write_bytes(b"not a faiss index at all")
    with pytest.raises(CorruptIndexError, match="checksum"):
        ItemIndex.load(path)


def test_unreadable_index_without_checksum_is_a_clear_error(saved):
    path, _, _ = saved
    meta = json.loads(sidecar_path(path).read_text())
    meta.pop("index_sha256")
    sidecar_path(path).write_text(json.dumps(meta))
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(CorruptIndexError, match="faiss cannot read it"):
        ItemIndex.load(path)


def test_missing_or_broken_sidecar(saved):
    path, _, _ = saved
    sidecar_path(path).write_text("{not json")
    with pytest.raises(CorruptIndexError, match="unreadable sidecar"):
        ItemIndex.load(path)
    sidecar_path(path).unlink()
    with pytest.raises(CorruptIndexError, match="sidecar"):
        ItemIndex.load(path)


def test_sidecar_and_index_disagree(tmp_path, saved, vectors):
    path, _, ids = saved
    other = ItemIndex.build(vectors[:10], ids[:10], model_hash="abc123").save(tmp_path / "other.faiss")
    shutil.copy(other, path)  # a valid index of the wrong size, sidecar checksum left as is
    meta = json.loads(sidecar_path(path).read_text())
    meta.pop("index_sha256")
    sidecar_path(path).write_text(json.dumps(meta))
    with pytest.raises(CorruptIndexError, match="n=10"):
        ItemIndex.load(path)


def test_model_hash_mismatch(saved):
    path, _, _ = saved
    with pytest.raises(IndexMismatchError, match="built for model abc123"):
        ItemIndex.load(path, expected_model_hash="def456")


def test_missing_index_file(tmp_path):
    with pytest.raises(CorruptIndexError, match="missing"):
        ItemIndex.load(tmp_path / "nothing.faiss")


def test_build_rejects_wrong_id_count(vectors):
    with pytest.raises(ValueError, match="300 vectors for 3 item ids"):
        ItemIndex.build(vectors, ["a", "b", "c"], model_hash="x")
