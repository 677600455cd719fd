"""Training examples and behaviour histories for the towers, as flat numpy arrays.

One training example per behaviour row before the cutoff: (user, item, type, time, weight = the
dataset's confidence weight for the type). The user tower sees, for each behaviour type, the user's
``max_history`` most recent events of that type *strictly before the example's timestamp* — so the
basket an item was bought in (same timestamp) never leaks into its own history. Histories are not
materialised per example: per type we keep the events sorted by (user, time) and, per example, the
end offset into that array; a batch gathers its window with one vectorised index.

User code 0 and item code 0 in history arrays are padding; real item codes are shifted by one there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

_TS_BITS = 32  # seconds since the slice's first event fit in 32 bits for ~136 years


@dataclass
class TypeHistory:
    key: np.ndarray  # (n_events,) int64, user_code << 32 | seconds, sorted
    items: np.ndarray  # (n_events,) int64 item code + 1 (0 = padding)


@dataclass
class Interactions:
    user_ids: list[str]  # user code u (1-based) -> user_ids[u - 1]
    types: list[str]
    user: np.ndarray  # (n,) int64 1-based user code
    item: np.ndarray  # (n,) int64 catalogue code
    type: np.ndarray  # (n,) int64 index into types
    seconds: np.ndarray  # (n,) int64 seconds since t0
    weight: np.ndarray  # (n,) float32
    histories: list[TypeHistory]
    item_freq: np.ndarray  # (n_items,) float64 training frequency (for logQ and popularity)

    def __len__(self) -> int:
        return len(self.user)

    def user_item_lists(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct items per user as CSR ``(ptr, idx)`` indexed by user code - 1 (0-based)."""
        pairs = np.unique(np.stack([self.user - 1, self.item], axis=1), axis=0) if len(self.user) else np.zeros((0, 2), np.int64)
        counts = np.bincount(pairs[:, 0], minlength=len(self.user_ids)) if len(pairs) else np.zeros(len(self.user_ids), np.int64)
        ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return ptr, pairs[:, 1].astype(np.int64)

    def history_window(self, users: np.ndarray, seconds: np.ndarray | None, length: int) -> list[np.ndarray]:
        """Per behaviour type, an int64 ``(len(users), length)`` array of shifted item codes (0 = padding),
        newest first, of events strictly before ``seconds`` (None = the user's whole history)."""
        out = []
        ukey = users.astype(np.int64) << _TS_BITS
        qkey = ukey + ((1 << _TS_BITS) - 1 if seconds is None else seconds.astype(np.int64))
        for h in self.histories:
            end = np.searchsorted(h.key, qkey, side="left")
            start = np.searchsorted(h.key, ukey, side="left")
            idx = end[:, None] - 1 - np.arange(length)[None, :]
            valid = idx >= start[:, None]
            out.append(np.where(valid, h.items[np.clip(idx, 0, max(len(h.items) - 1, 0))], 0) if len(h.items)
                       else np.zeros((len(users), length), dtype=np.int64))
        return out


def build_interactions(behaviors: pl.DataFrame, item_codes: dict[str, int], n_items: int,
                       weights: dict[str, float]) -> Interactions:
    """Flatten behaviour rows (already cut at the cutoff and sliced) into arrays sorted by (user, ts)."""
    b = behaviors.filter(pl.col("item_id").is_in(list(item_codes))).sort(["user_id", "ts"])
    user_ids = sorted(b["user_id"].unique().to_list())
    ucode = {u: i + 1 for i, u in enumerate(user_ids)}
    types = sorted(b["behavior"].unique().to_list())
    tcode = {t: i for i, t in enumerate(types)}
    user = np.fromiter((ucode[u] for u in b["user_id"].to_list()), dtype=np.int64, count=b.height)
    item = np.fromiter((item_codes[i] for i in b["item_id"].to_list()), dtype=np.int64, count=b.height)
    typ = np.fromiter((tcode[t] for t in b["behavior"].to_list()), dtype=np.int64, count=b.height)
    ts = b["ts"].dt.epoch("s").to_numpy().astype(np.int64)
    t0 = int(ts.min()) if len(ts) else 0
    seconds = ts - t0
    w = np.array([weights.get(t, 1.0) for t in types], dtype=np.float32)[typ] if len(types) else np.zeros(0, np.float32)
    key = (user << _TS_BITS) | seconds
    order = np.argsort(key, kind="stable")
    user, item, typ, seconds, w, key = (a[order] for a in (user, item, typ, seconds, w, key))
    histories = []
    for t in range(len(types)):
        m = typ == t
        histories.append(TypeHistory(key=key[m], items=item[m] + 1))
    freq = np.bincount(item, minlength=n_items).astype(np.float64)
    return Interactions(user_ids=user_ids, types=types, user=user, item=item, type=typ, seconds=seconds,
                        weight=w, histories=histories, item_freq=freq)
