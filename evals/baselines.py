"""Non-neural baselines, all fitted on the protocol's training rows only and ranked over the full catalogue.

* **popularity**: the most bought items before T, the same list for everyone (repeats allowed).
* **personal top-frequency**: the user's own items by purchase count (ties: most recent first). It
  only ever recommends repeats and is not padded, so its explore figures are 0 by construction. For
  next-basket grocery data it is the strongest simple baseline.
* **item-kNN**: item-item cosine over binary user×item co-occurrence, each item keeping its
  ``neighbors`` most similar items (RecBole's ItemKNN, k=100, no shrinkage); a user's score for item j
  is the summed similarity of j to the items in their history. Items the user already bought are
  excluded (the "log-fitting" explore model of the first calibration).
* **TIFU-KNN** (Hu et al., KDD 2020): time-decayed basket vectors plus user kNN, the standard
  next-basket baseline; the maths and the basket definition are in ``retrieval/repeat.py`` (the
  retriever's repeat channel uses the same score). Its parameters come from
  ``evals/tifu_tuning.py`` on a validation split before T.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import scipy.sparse as sp

from evals.protocol import Split
from retrieval.repeat import BasketHistory, TifuParams, predict_scores, top_k_rows, user_vectors


def popularity(split: Split, k: int) -> dict[str, list[str]]:
    top = [i for i, _ in sorted(split.item_pop.items(), key=lambda x: (-x[1], x[0]))[:k]]
    return {u: top for u in split.users}


def top_frequency(split: Split, k: int) -> dict[str, list[str]]:
    out = {}
    for u in split.users:
        counts = split.train_counts[u]
        last = split.last_seen[u]
        out[u] = sorted(counts, key=lambda i: (-counts[i], -last[i].timestamp(), i))[:k]
    return out


def _user_item_matrix(split: Split, item_code: dict[str, int]) -> tuple[sp.csr_matrix, dict[str, int]]:
    targets = split.stats["target_behaviors"]
    pairs = (split.train.filter(pl.col("behavior").is_in(targets)).select("user_id", "item_id").unique()
             .filter(pl.col("item_id").is_in(list(item_code))))
    users = sorted(pairs["user_id"].unique().to_list())
    ucode = {u: i for i, u in enumerate(users)}
    r = np.fromiter((ucode[u] for u in pairs["user_id"].to_list()), dtype=np.int64, count=pairs.height)
    c = np.fromiter((item_code[i] for i in pairs["item_id"].to_list()), dtype=np.int64, count=pairs.height)
    X = sp.csr_matrix((np.ones(len(r), dtype=np.float32), (r, c)), shape=(len(users), len(item_code)))
    return X, ucode


def item_knn(split: Split, k: int, *, neighbors: int = 100, chunk: int = 2048) -> dict[str, list[str]]:
    items = split.catalogue
    item_code = {s: i for i, s in enumerate(items)}
    X, ucode = _user_item_matrix(split, item_code)
    norms = np.sqrt(np.asarray(X.sum(axis=0)).ravel())
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0).astype(np.float32)
    Xn = (X @ sp.diags(inv)).tocsc()
    XnT = Xn.T.tocsr()
    active = np.flatnonzero(norms > 0)
    rows, cols, vals = [], [], []
    for s in range(0, len(active), chunk):
        idx = active[s:s + chunk]
        S = (XnT[idx] @ Xn).tocsr()  # (chunk, n_items) cosine similarities
        for j, i in enumerate(idx):
            a, b = S.indptr[j], S.indptr[j + 1]
            cidx, v = S.indices[a:b], S.data[a:b]
            keep = cidx != i
            cidx, v = cidx[keep], v[keep]
            if len(v) > neighbors:
                top = np.argpartition(-v, neighbors - 1)[:neighbors]
                cidx, v = cidx[top], v[top]
            rows.append(np.full(len(cidx), i, dtype=np.int64))
            cols.append(cidx.astype(np.int64))
            vals.append(v.astype(np.float32))
    n = len(items)
    sim = sp.csr_matrix((np.concatenate(vals) if vals else np.zeros(0, np.float32),
                         (np.concatenate(rows) if rows else np.zeros(0, np.int64),
                          np.concatenate(cols) if cols else np.zeros(0, np.int64))), shape=(n, n))
    out: dict[str, list[str]] = {}
    users = [u for u in split.users if u in ucode]
    for s in range(0, len(users), 256):
        batch = users[s:s + 256]
        Xu = X[[ucode[u] for u in batch]]
        scores = (Xu @ sim).toarray()
        scores[Xu.toarray() > 0] = -np.inf  # seen items excluded
        for j, u in enumerate(batch):
            row = scores[j]
            cand = np.argpartition(-row, min(k, n - 1))[:k]
            cand = cand[np.isfinite(row[cand]) & (row[cand] > 0)]
            out[u] = [items[c] for c in cand[np.argsort(-row[cand], kind="stable")]]
    for u in split.users:
        out.setdefault(u, [])
    return out


def tifu_knn(split: Split, k: int, params: TifuParams | None = None, *,
             history: BasketHistory | None = None) -> dict[str, list[str]]:
    """TIFU-KNN lists for the evaluated users; the vectors and neighbours cover every user with
    purchases before T (``history`` may be passed in to reuse its baskets)."""
    p = params or TifuParams()
    h = history or BasketHistory.from_behaviors(split.train, split.catalogue, basket=p.basket)
    X = user_vectors(h, p)
    code = {u: i for i, u in enumerate(h.user_ids)}
    users = [u for u in split.users if u in code]
    out: dict[str, list[str]] = {u: [] for u in split.users}
    for s in range(0, len(users), 512):
        batch = users[s:s + 512]
        S = predict_scores(X, np.array([code[u] for u in batch], np.int64), p)
        for u, idx in zip(batch, top_k_rows(S, k), strict=True):
            out[u] = [h.item_ids[i] for i in idx]
    return out
