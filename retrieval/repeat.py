"""TIFU-KNN (Hu et al., KDD 2020): time-decayed basket vectors plus user kNN, the next-basket baseline,
and the personal repeat score of IntentRec's repeat channel.

**Baskets.** Datasets carry no basket id column; a basket is either one timestamp of a user (grocery
receipts: every line of a basket shares the transaction time) or one day of a user. ``basket="auto"``
takes the timestamp when timestamps group lines (on average at least 1.5 target-behaviour lines
per distinct user timestamp) and the day otherwise (event logs with one timestamp per click).
Only target behaviours (purchases where the dataset has them, else every type) make baskets; an item
counts once per basket.

**User vector** (the paper's equations). A user's n baskets, oldest first, are cut into ``groups``
consecutive groups as the official code cuts them (equal sizes, the last groups one basket longer
when n is not a multiple; one basket per group when n < groups). Inside a group of size m the i-th
basket (1-based) weighs ``within_decay^(m-i)``, and the group vector is the weighted sum over m; the
user vector is ``Σ_j group_decay^(groups-j) · v_gj / n_groups``, j the group's position (the newest
group weighs 1). The official code decays baskets by their position in the whole history rather
than in the group; the paper's within-group form is used here.

**Prediction.** ``α·v_u + (1−α)·mean(v_neighbours)``, the neighbours being the ``k`` nearest other
users by Euclidean distance between user vectors (all users with history before the cutoff, the
user itself excluded). Items are ranked by that score; every parameter is a field of
:class:`TifuParams`, chosen on a validation split (``evals/tifu_tuning.py``), never on the test window.

The **repeat channel** of the retriever serves the same score restricted to the items the user has
already bought: TIFU's ranking of repeats, with discovery left to the towers' channels.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import scipy.sparse as sp

from core.errors import DataError

REPEAT_BEHAVIORS = ("purchase",)


@dataclass(frozen=True)
class TifuParams:
    """Defaults: the choice of ``python -m evals.tifu_tuning`` on completejourney's validation split
    (cutoff 2017-09-03, the 28 days before the test cutoff), from the grid in that module. The paper's
    own completejourney-like setting (7 groups, decays 0.9/0.7, k=300, α=0.7) was part of the grid.
    Receipt-timestamp baskets won there; "auto" picks them on completejourney and day baskets on
    datasets with one timestamp per event."""
    groups: int = 3
    within_decay: float = 1.0
    group_decay: float = 0.7
    k: int = 600
    alpha: float = 0.5
    basket: Literal["auto", "timestamp", "day"] = "auto"

    def as_dict(self) -> dict:
        return asdict(self)


def target_rows(behaviors: pl.DataFrame, behaviors_wanted: tuple[str, ...] = REPEAT_BEHAVIORS) -> pl.DataFrame:
    """The rows that make baskets: ``behaviors_wanted`` where the data has them, else every row."""
    present = set(behaviors["behavior"].unique().to_list()) if behaviors.height else set()
    wanted = [b for b in behaviors_wanted if b in present]
    return behaviors.filter(pl.col("behavior").is_in(wanted)) if wanted else behaviors


def basket_mode(rows: pl.DataFrame, basket: str = "auto") -> str:
    """Resolve ``basket="auto"``: "timestamp" when timestamps group lines into receipts, else "day"."""
    if basket != "auto":
        return basket
    if rows.height == 0:
        return "day"
    n_ts = rows.select(pl.struct("user_id", "ts").n_unique()).item()
    return "timestamp" if rows.height / max(n_ts, 1) >= 1.5 else "day"


def group_index(n_baskets: np.ndarray, position: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For basket ``position`` (0-based, oldest first) of a user with ``n_baskets``: (group index, position
    inside the group, size of that group), vectorised. The official TIFU-KNN grouping: with n >= groups,
    ``groups - extra`` groups of ``n // groups`` baskets, then ``extra = n % groups`` groups of one more;
    with n < groups, one basket per group."""
    n = n_baskets.astype(np.int64)
    p = position.astype(np.int64)
    small = n < groups
    base = np.maximum(n // groups, 1)
    extra = np.where(small, 0, n - base * groups)
    n_short = groups - extra  # groups of size `base`
    cut = n_short * base
    in_short = p < cut
    g = np.where(in_short, p // base, n_short + (p - cut) // (base + 1))
    size = np.where(in_short, base, base + 1)
    start = np.where(in_short, g * base, cut + (g - n_short) * (base + 1))
    g = np.where(small, p, g)
    size = np.where(small, 1, size)
    start = np.where(small, p, start)
    return g, p - start, size


@dataclass
class BasketHistory:
    """Every user's baskets before the cutoff, flattened: one row per (user, basket, item)."""
    user_ids: list[str]
    item_ids: list[str]
    user: np.ndarray  # row -> user code
    item: np.ndarray  # row -> item code
    basket: np.ndarray  # row -> basket position within the user, 0 = oldest
    n_baskets: np.ndarray  # user code -> number of baskets
    last_day: np.ndarray  # user code -> day number (days since epoch) of the newest basket
    basket_days: list[np.ndarray]  # user code -> day numbers of the baskets, oldest first
    mode: str

    @classmethod
    def from_behaviors(cls, behaviors: pl.DataFrame, item_ids: list[str], *, basket: str = "auto",
                       behaviors_wanted: tuple[str, ...] = REPEAT_BEHAVIORS) -> BasketHistory:
        rows = target_rows(behaviors, behaviors_wanted).filter(pl.col("item_id").is_in(item_ids))
        mode = basket_mode(rows, basket)
        key = pl.col("ts") if mode == "timestamp" else pl.col("ts").dt.truncate("1d")
        b = (rows.select("user_id", "item_id", key.alias("bk"))
             .unique().sort(["user_id", "bk", "item_id"]))
        if b.height == 0:
            return cls(user_ids=[], item_ids=list(item_ids), user=np.zeros(0, np.int64), item=np.zeros(0, np.int64),
                       basket=np.zeros(0, np.int64), n_baskets=np.zeros(0, np.int64), last_day=np.zeros(0, np.int64),
                       basket_days=[], mode=mode)
        b = b.with_columns(pl.col("bk").rank("dense").over("user_id").cast(pl.Int64).alias("pos") - 1)
        user_ids = b["user_id"].unique(maintain_order=True).to_list()
        ucode = {u: i for i, u in enumerate(user_ids)}
        icode = {s: i for i, s in enumerate(item_ids)}
        user = np.fromiter((ucode[u] for u in b["user_id"].to_list()), np.int64, b.height)
        item = np.fromiter((icode[i] for i in b["item_id"].to_list()), np.int64, b.height)
        pos = b["pos"].to_numpy().astype(np.int64)
        days_df = (b.select("user_id", "pos", (pl.col("bk").dt.epoch("d")).alias("day")).unique()
                   .sort(["user_id", "pos"]))
        basket_days = [g["day"].to_numpy().astype(np.int64) for _, g in
                       days_df.group_by("user_id", maintain_order=True)]
        n_b = np.array([len(d) for d in basket_days], np.int64)
        return cls(user_ids=user_ids, item_ids=list(item_ids), user=user, item=item, basket=pos, n_baskets=n_b,
                   last_day=np.array([d[-1] for d in basket_days], np.int64), basket_days=basket_days, mode=mode)


def user_vectors(h: BasketHistory, p: TifuParams) -> sp.csr_matrix:
    """TIFU user vectors (n_users × n_items), the paper's within-group and across-group decays."""
    if p.groups < 1 or not (0 < p.within_decay <= 1) or not (0 < p.group_decay <= 1) or not (0 < p.alpha <= 1):
        raise DataError(f"TIFU-KNN parameters out of range: {p}")
    shape = (len(h.user_ids), len(h.item_ids))
    if len(h.user) == 0:
        return sp.csr_matrix(shape, dtype=np.float64)
    n = h.n_baskets[h.user]
    g, i, m = group_index(n, h.basket, p.groups)
    real_groups = np.minimum(n, p.groups)
    w = (p.within_decay ** (m - 1 - i)) / m * (p.group_decay ** (p.groups - 1 - g)) / real_groups
    return sp.csr_matrix((w, (h.user, h.item)), shape=shape)  # duplicates (user, item) are summed


def neighbours(X: sp.csr_matrix, rows: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Indices of the ``k`` nearest users (Euclidean, self excluded) for each of ``rows``; (len(rows), k')
    with k' = min(k, n_users - 1)."""
    n = X.shape[0]
    kk = min(k, n - 1)
    if kk <= 0:
        return np.zeros((len(rows), 0), np.int64)
    sq = np.asarray(X.multiply(X).sum(axis=1)).ravel()
    XT = X.T.tocsc()
    out = []
    for s in range(0, len(rows), chunk):
        r = rows[s:s + chunk]
        d = sq[r][:, None] + sq[None, :] - 2.0 * (X[r] @ XT).toarray()
        d[np.arange(len(r)), r] = np.inf
        part = np.argpartition(d, kk - 1, axis=1)[:, :kk]
        order = np.argsort(np.take_along_axis(d, part, axis=1), axis=1, kind="stable")
        out.append(np.take_along_axis(part, order, axis=1))
    return np.concatenate(out) if out else np.zeros((0, kk), np.int64)


def predict_scores(X: sp.csr_matrix, rows: np.ndarray, p: TifuParams, nbrs: np.ndarray | None = None) -> sp.csr_matrix:
    """``α·v_u + (1−α)·mean(v_neighbours)`` for each of ``rows`` (sparse, len(rows) × n_items)."""
    if nbrs is None:
        nbrs = neighbours(X, rows, p.k)
    own = X[rows]
    if nbrs.shape[1] == 0 or p.alpha >= 1.0:
        return (own * p.alpha).tocsr() if p.alpha < 1.0 else own.tocsr()
    W = sp.csr_matrix((np.full(nbrs.size, 1.0 / nbrs.shape[1]), (np.repeat(np.arange(len(rows)), nbrs.shape[1]),
                                                                 nbrs.ravel())), shape=(len(rows), X.shape[0]))
    return (p.alpha * own + (1.0 - p.alpha) * (W @ X)).tocsr()


def top_k_rows(S: sp.csr_matrix, k: int) -> list[np.ndarray]:
    """Per row, the column indices of the ``k`` largest positive entries, best first (ties: lower index)."""
    out = []
    for j in range(S.shape[0]):
        a, b = S.indptr[j], S.indptr[j + 1]
        idx, v = S.indices[a:b], S.data[a:b]
        keep = v > 0
        idx, v = idx[keep], v[keep]
        order = np.lexsort((idx, -v))[:k]
        out.append(idx[order].astype(np.int64))
    return out


def restrict_to_support(S: sp.csr_matrix, support: sp.csr_matrix) -> sp.csr_matrix:
    """Entries of ``S`` only where ``support`` is non-zero (the repeat channel: items the user bought)."""
    mask = support.copy().tocsr()
    mask.data = np.ones_like(mask.data)
    return S.multiply(mask).tocsr()


def user_features(h: BasketHistory, X_personal: sp.csr_matrix, as_of_day: int) -> np.ndarray:
    """History features per user code, the inputs of the channel split model (``retrieval/channel_split.py``):

    0. log(1 + number of baskets);
    1. log(1 + distinct items bought);
    2. repeat share: of the item lines in baskets after the first, the share whose item was bought in an
       earlier basket;
    3. basket regularity: baskets per active week, log(1 + ·) (active weeks = first to last basket);
    4. log(1 + days since the newest basket), as of ``as_of_day``.
    """
    n_users = len(h.user_ids)
    out = np.zeros((n_users, 5), np.float64)
    if n_users == 0:
        return out
    distinct = np.diff(X_personal.indptr)
    # first basket position of each (user, item): a line is a repeat if its basket is later than that
    key = h.user * (len(h.item_ids) + 1) + h.item
    order = np.lexsort((h.basket, key))
    k_sorted = key[order]
    first_mask = np.r_[True, k_sorted[1:] != k_sorted[:-1]]
    is_repeat = np.empty(len(key), bool)
    is_repeat[order] = ~first_mask
    later = h.basket > 0
    lines_later = np.bincount(h.user[later], minlength=n_users)
    rep_later = np.bincount(h.user[later & is_repeat], minlength=n_users)
    span_weeks = np.array([max((d[-1] - d[0]) / 7.0, 1.0) for d in h.basket_days])
    out[:, 0] = np.log1p(h.n_baskets)
    out[:, 1] = np.log1p(distinct)
    out[:, 2] = np.divide(rep_later, lines_later, out=np.zeros(n_users), where=lines_later > 0)
    out[:, 3] = np.log1p(h.n_baskets / span_weeks)
    out[:, 4] = np.log1p(np.maximum(as_of_day - h.last_day, 0))
    return out


FEATURE_NAMES = ("log_baskets", "log_distinct_items", "repeat_share", "log_baskets_per_week", "log_days_since_last")


def pair_features(h: BasketHistory, support: sp.csr_matrix, as_of_day: int) -> np.ndarray:
    """Per (user, bought item), aligned with ``support``'s CSR entries (sorted indices): what a re-buy
    depends on beyond the decayed frequency (Li et al.'s next-basket reality check; ReCANet):

    0. share of the user's baskets that hold the item;
    1. log(1 + days since the user last bought it);
    2. those days over the user's mean interval between purchases of the item (capped at 10; the
       user's mean gap between baskets for an item bought once);
    3. 1 if the item was bought at least twice, else 0;
    4. the item's re-buy rate over all users (of its buyers, the share who bought it twice or more).
    """
    n_users, n_items = support.shape
    out = np.zeros((support.nnz, 5), np.float64)
    if support.nnz == 0:
        return out
    day = np.concatenate(h.basket_days)[np.concatenate([[0], np.cumsum(h.n_baskets)[:-1]])[h.user] + h.basket]
    key = h.user * n_items + h.item
    order = np.argsort(key, kind="stable")
    k_sorted, d_sorted = key[order], day[order]
    starts = np.r_[0, np.flatnonzero(k_sorted[1:] != k_sorted[:-1]) + 1]
    pair_key = k_sorted[starts]
    count = np.diff(np.r_[starts, len(k_sorted)])
    first = np.minimum.reduceat(d_sorted, starts)
    last = np.maximum.reduceat(d_sorted, starts)
    rows = np.repeat(np.arange(n_users), np.diff(support.indptr))
    want = rows.astype(np.int64) * n_items + support.indices
    pos = np.searchsorted(pair_key, want)
    pos = np.minimum(pos, len(pair_key) - 1)
    found = pair_key[pos] == want
    c = np.where(found, count[pos], 0).astype(np.float64)
    since = np.where(found, as_of_day - last[pos], 0).astype(np.float64)
    span = np.where(found, last[pos] - first[pos], 0).astype(np.float64)
    user_gap = np.array([max((d[-1] - d[0]) / max(len(d) - 1, 1), 1.0) for d in h.basket_days])[rows]
    interval = np.where(c >= 2, np.maximum(span / np.maximum(c - 1, 1), 1.0), user_gap)
    bought = np.bincount(h.item[order[starts]], minlength=n_items)
    twice = np.bincount(h.item[order[starts[count >= 2]]], minlength=n_items)
    rate = np.divide(twice, bought, out=np.zeros(n_items), where=bought > 0)
    out[:, 0] = c / np.maximum(h.n_baskets[rows], 1)
    out[:, 1] = np.log1p(np.maximum(since, 0))
    out[:, 2] = np.minimum(since / interval, 10.0)
    out[:, 3] = (c >= 2).astype(np.float64)
    out[:, 4] = rate[support.indices]
    return out


PAIR_FEATURE_NAMES = ("basket_share", "log_days_since_item", "since_over_interval", "bought_twice", "item_rebuy_rate")


@dataclass
class RepeatScores:
    """Per user, the TIFU-KNN score of every item the user already bought (CSR over catalogue codes),
    the (user, item) re-buy features aligned with it (:func:`pair_features`) and the user's history
    features (:func:`user_features`); what the retriever's repeat channel serves."""
    user_ids: list[str]
    ptr: np.ndarray
    idx: np.ndarray
    val: np.ndarray
    features: np.ndarray
    params: TifuParams
    basket_mode: str
    as_of_day: int = 0  # the history ends strictly before this day (days since 1970-01-01)
    pairs: np.ndarray | None = None  # (nnz, len(PAIR_FEATURE_NAMES)) aligned with idx

    def __post_init__(self) -> None:
        self._code = {u: i for i, u in enumerate(self.user_ids)}

    def ranked(self, user_id: str, k: int | None = None) -> list[tuple[int, float]]:
        """The user's bought items as (catalogue code, score), best first (ties: lower code)."""
        codes, scores, _ = self.candidates(user_id)
        return [(int(c), float(s)) for c, s in zip(codes[:k], scores[:k], strict=True)]

    def candidates(self, user_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every bought item of the user: (codes, TIFU scores, pair features), by score (ties: lower code)."""
        c = self._code.get(user_id)
        if c is None:
            return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros((0, len(PAIR_FEATURE_NAMES)), np.float32)
        a, b = self.ptr[c], self.ptr[c + 1]
        idx, val = self.idx[a:b], self.val[a:b]
        order = np.lexsort((idx, -val))
        pairs = self.pairs[a:b][order] if self.pairs is not None else np.zeros((len(order), len(PAIR_FEATURE_NAMES)))
        return idx[order], val[order], pairs

    def user_features(self, user_id: str) -> np.ndarray | None:
        c = self._code.get(user_id)
        return None if c is None else self.features[c]

    @classmethod
    def compute(cls, behaviors: pl.DataFrame, item_ids: list[str], params: TifuParams, as_of_day: int,
                chunk: int = 512) -> RepeatScores:
        h = BasketHistory.from_behaviors(behaviors, item_ids, basket=params.basket)
        X = user_vectors(h, params)
        parts = []
        nb = neighbours(X, np.arange(X.shape[0]), params.k) if X.shape[0] else None
        for s in range(0, X.shape[0], chunk):
            rows = np.arange(s, min(s + chunk, X.shape[0]))
            parts.append(restrict_to_support(predict_scores(X, rows, params, nbrs=nb[rows]), X[rows]))
        S = sp.vstack(parts).tocsr() if parts else sp.csr_matrix((0, len(item_ids)))
        S.sort_indices()
        support = X.tocsr(copy=True)
        support.sort_indices()
        if not np.array_equal(support.indptr, S.indptr) or not np.array_equal(support.indices, S.indices):
            raise DataError("TIFU-KNN scores lost a bought item (a score of exactly 0)")
        return cls(user_ids=h.user_ids, ptr=S.indptr.astype(np.int64), idx=S.indices.astype(np.int64),
                   val=S.data.astype(np.float32), features=user_features(h, X, as_of_day).astype(np.float32),
                   params=params, basket_mode=h.mode, as_of_day=int(as_of_day),
                   pairs=pair_features(h, support, as_of_day).astype(np.float32))

    def save(self, path: Path, key: str) -> None:
        """``path`` (safetensors: ptr, idx, val, features) plus ``path.json`` (users, parameters, key)."""
        from safetensors.numpy import save_file

        save_file({"ptr": self.ptr, "idx": self.idx, "val": self.val, "features": self.features,
                   "pairs": self.pairs if self.pairs is not None else np.zeros((0, 0), np.float32)}, str(path))
        meta = {"key": key, "user_ids": self.user_ids, "params": self.params.as_dict(), "basket_mode": self.basket_mode,
                "as_of_day": self.as_of_day}
        path.with_suffix(".json").write_text(json.dumps(meta), encoding="utf-8")

    @classmethod
    def load(cls, path: Path, key: str) -> RepeatScores | None:
        """The cached scores, or None when missing or computed for another key (parameters, data, cutoff)."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
            if meta.get("key") != key:
                return None
            arr = load_file(str(path))
            pairs = arr["pairs"]
            if pairs.shape != (len(arr["idx"]), len(PAIR_FEATURE_NAMES)):
                return None
            return cls(user_ids=meta["user_ids"], ptr=arr["ptr"], idx=arr["idx"], val=arr["val"],
                       features=arr["features"], params=TifuParams(**meta["params"]), basket_mode=meta["basket_mode"],
                       as_of_day=meta["as_of_day"], pairs=pairs)
        except (FileNotFoundError, ValueError, KeyError, TypeError, SafetensorError):  # stale or damaged: recompute
            return None
