"""Item vectors the semantic IDs are built from: the retriever's item tower, or a cheap collaborative
embedding of the training rows (truncated SVD of user x item plus a category embedding)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl

from retrieval.index import l2_normalise


@dataclass(frozen=True)
class ItemVectors:
    item_ids: list[str]  # row i of ``vecs`` is item ``item_ids[i]``
    vecs: np.ndarray  # (n_items, d) float32
    source: str  # "towers" or "svd+category"

    def __post_init__(self):
        if self.vecs.ndim != 2 or self.vecs.shape[0] != len(self.item_ids):
            raise ValueError(f"{self.vecs.shape} vectors for {len(self.item_ids)} item ids")

    def subset(self, keep: list[str]) -> ItemVectors:
        """The rows of the items in ``keep`` that have a vector, in the order of ``keep``."""
        row = {s: i for i, s in enumerate(self.item_ids)}
        rows = [row[s] for s in keep if s in row]
        return ItemVectors([self.item_ids[i] for i in rows], self.vecs[rows], self.source)


def tower_vectors(retriever) -> ItemVectors:
    """The item-tower vectors of a built :class:`retrieval.service.Retriever` (rows = its item ids)."""
    return ItemVectors(list(retriever.item_ids), np.asarray(retriever.item_vecs, dtype=np.float32), "towers")


def collaborative_vectors(train: pl.DataFrame, category_of: Mapping[str, str], *, dim: int = 64,
                          category_weight: float = 0.5, seed: int = 42) -> ItemVectors:
    """Items with a training row: ``[svd, category_weight * category]`` with both halves L2-normalised.
    ``svd`` = item factors of a truncated SVD of the user x item matrix of ``log(1 + rows)``;
    ``category`` = the mean SVD vector of the item's category (an embedding learnt from the same rows)."""
    from scipy.sparse import csr_matrix
    from sklearn.decomposition import TruncatedSVD

    pairs = train.group_by("user_id", "item_id").len()
    items = sorted(pairs["item_id"].unique().to_list())
    users = sorted(pairs["user_id"].unique().to_list())
    icode = {s: i for i, s in enumerate(items)}
    ucode = {s: i for i, s in enumerate(users)}
    rows = np.fromiter((ucode[u] for u in pairs["user_id"].to_list()), np.int64, pairs.height)
    cols = np.fromiter((icode[i] for i in pairs["item_id"].to_list()), np.int64, pairs.height)
    m = csr_matrix((np.log1p(pairs["len"].to_numpy().astype(np.float64)), (rows, cols)),
                   shape=(len(users), len(items)))
    k = max(1, min(dim, min(m.shape) - 1))
    svd = TruncatedSVD(n_components=k, random_state=seed).fit(m)
    factors = l2_normalise(svd.components_.T * np.sqrt(svd.singular_values_)[None, :])
    cats = [category_of.get(i) or "" for i in items]
    _, cat_code = np.unique(np.array(cats, dtype=object), return_inverse=True)
    sums = np.zeros((int(cat_code.max()) + 1, k))
    np.add.at(sums, cat_code, factors)
    cat_vecs = l2_normalise(sums[cat_code])
    vecs = np.hstack([factors, category_weight * cat_vecs]).astype(np.float32)
    return ItemVectors(items, vecs, "svd+category")
