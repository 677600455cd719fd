"""Training and serving inputs: per-user sequences before the cutoff, token features, graded lists.

Token features (one row each): token, digit slot (BOS 1, SID digit d at 2 + d), item position
(right-aligned, BOS 0, the item to predict at ``max_len + 1``), the item's behaviour, and on an
item's last token only the *next* event's behaviour and the bucketed log gap in days to it (at
serving: the target behaviour and the days from the last event to the cutoff)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl

from retrieval.generative.vocab import BOS, SidVocab

N_FEATURES = 6  # token, digit, position, behaviour, next behaviour, gap bucket
N_GAP = 12


def gap_bucket(days) -> np.ndarray:
    """1: under an hour (same basket), then 2 + floor(log2(1 + days)) capped at ``N_GAP - 1``."""
    d = np.maximum(np.asarray(days, dtype=np.float64), 0.0)
    b = 2 + np.minimum(np.floor(np.log2(1.0 + d)), N_GAP - 3)
    return np.where(d < 1 / 24, 1, b).astype(np.int64)


@dataclass
class Sequences:
    """All users' rows before the cutoff whose item has an SID, in time order (seeded order inside a
    timestamp). User ``u``'s rows are ``ptr[u]:ptr[u + 1]`` of ``codes`` / ``beh`` / ``days``."""

    users: list[str]
    ptr: np.ndarray
    codes: np.ndarray
    beh: np.ndarray  # behaviour ids, 1-based into beh_names
    days: np.ndarray  # float days since the epoch
    beh_names: list[str]
    target_beh: int
    cutoff_days: float

    @classmethod
    def build(cls, train: pl.DataFrame, vocab: SidVocab, cutoff: datetime, target_behaviors, seed: int = 42
              ) -> Sequences:
        t = train.filter(pl.col("item_id").is_in(vocab.item_ids))
        names = sorted(t["behavior"].unique().to_list())
        targets = [b for b in target_behaviors if b in names]
        if not targets:
            raise ValueError(f"none of the target behaviours {list(target_behaviors)} occurs before the cutoff")
        t = (t.with_columns(pl.Series("_r", np.random.default_rng(seed).random(t.height)))
             .sort(["user_id", "ts", "_r"]))
        uid = t["user_id"].to_numpy().astype(str)
        starts = np.concatenate([[0], np.flatnonzero(uid[1:] != uid[:-1]) + 1]).astype(np.int64)
        users, ptr = uid[starts], np.append(starts, len(uid)).astype(np.int64)
        code = vocab.code
        codes = np.fromiter((code[i] for i in t["item_id"].to_list()), np.int64, t.height)
        bid = {b: i + 1 for i, b in enumerate(names)}
        beh = np.fromiter((bid[b] for b in t["behavior"].to_list()), np.int64, t.height)
        days = t["ts"].dt.epoch("s").to_numpy().astype(np.float64) / 86400.0
        return cls(users.tolist(), ptr, codes, beh, days, names, bid[targets[0]], cutoff.timestamp() / 86400.0)

    @property
    def multi_behaviour(self) -> bool:
        return len(self.beh_names) > 1

    def user_index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.users)}

    def rows(self, u: int) -> slice:
        return slice(int(self.ptr[u]), int(self.ptr[u + 1]))

    def windows(self, max_len: int, max_per_user: int | None = None) -> np.ndarray:
        """(n, 3) ``[user, start, end]`` (row indices, ``end`` = the item to predict): non-overlapping
        from each user's most recent row back, plus, with several behaviour types, one window
        ending at every target-behaviour row."""
        out = []
        for u in range(len(self.users)):
            lo, hi = int(self.ptr[u]), int(self.ptr[u + 1])
            ends, e = [], hi - 1
            while e > lo:
                ends.append(e)
                e -= max_len
            if max_per_user is not None:
                ends = ends[:max_per_user]
            if self.multi_behaviour:
                extra = lo + 1 + np.flatnonzero(self.beh[lo + 1:hi] == self.target_beh)
                ends = sorted(set(ends) | set(extra.tolist()), reverse=True)
            out += [(u, max(lo, e - max_len), e) for e in ends]
        return np.asarray(out, dtype=np.int64).reshape(-1, 3)


def encode_items(vocab: SidVocab, codes, beh, next_beh, next_days, length: int, max_len: int,
                 *, drop_last_digit: bool) -> np.ndarray:
    """(N_FEATURES, length) int64 features of ``[BOS] + tokens(codes)``, left-padded with zeros. The
    last item sits at position ``max_len + 1`` when its last digit is dropped (training: it is the
    target), else at ``max_len`` (serving history)."""
    D, n = vocab.depth, len(codes)
    last_pos = max_len + 1 if drop_last_digit else max_len
    f = np.zeros((N_FEATURES, 1 + n * D), np.int64)
    f[0, 0], f[1, 0] = BOS, 1
    f[0, 1:] = vocab.item_tokens[np.asarray(codes, np.int64)].reshape(-1)
    f[1, 1:] = np.tile(np.arange(D) + 2, n)
    f[2, 1:] = np.repeat(last_pos - (n - 1) + np.arange(n), D)
    f[3, 1:] = np.repeat(np.asarray(beh, np.int64), D)
    f[4, D::D] = np.asarray(next_beh, np.int64)
    f[5, D::D] = np.where(np.asarray(next_beh) > 0, gap_bucket(next_days), 0)
    if drop_last_digit:
        f = f[:, :-1]
    if f.shape[1] > length:
        raise ValueError(f"{f.shape[1]} tokens do not fit {length}")
    out = np.zeros((N_FEATURES, length), np.int64)
    out[:, length - f.shape[1]:] = f
    return out


def train_length(vocab: SidVocab, max_len: int) -> int:
    return vocab.depth * (max_len + 1)


def serve_length(vocab: SidVocab, max_len: int) -> int:
    return 1 + vocab.depth * max_len


def window_batch(seqs: Sequences, vocab: SidVocab, windows: np.ndarray, max_len: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Features (B, N_FEATURES, L) and NTP targets (B, L) (0 = no target) for windows."""
    L = train_length(vocab, max_len)
    feats = np.zeros((len(windows), N_FEATURES, L), np.int64)
    targets = np.zeros((len(windows), L), np.int64)
    for j, (_, s, e) in enumerate(windows.tolist()):
        codes, beh, days = seqs.codes[s:e + 1], seqs.beh[s:e + 1], seqs.days[s:e + 1]
        nb = np.append(beh[1:], 0)
        gaps = np.append(np.diff(days), 0.0)
        feats[j] = encode_items(vocab, codes, beh, nb, gaps, L, max_len, drop_last_digit=True)
        tok = vocab.item_tokens[codes].reshape(-1)
        targets[j, L - len(tok):] = tok
    return feats, targets


def history_batch(seqs: Sequences, vocab: SidVocab, users: list[int], max_len: int) -> np.ndarray:
    """Serving features (B, N_FEATURES, L): each user's last ``max_len`` rows, the next event being the
    target behaviour at the cutoff. A user index of -1 (no rows) gets BOS alone."""
    L = serve_length(vocab, max_len)
    feats = np.zeros((len(users), N_FEATURES, L), np.int64)
    for j, u in enumerate(users):
        if u < 0:
            feats[j, 0, -1], feats[j, 1, -1] = BOS, 1
            continue
        r = seqs.rows(u)
        codes, beh, days = seqs.codes[r][-max_len:], seqs.beh[r][-max_len:], seqs.days[r][-max_len:]
        nb = np.append(beh[1:], seqs.target_beh)
        gaps = np.append(np.diff(days), seqs.cutoff_days - days[-1])
        feats[j] = encode_items(vocab, codes, beh, nb, gaps, L, max_len, drop_last_digit=False)
    return feats
