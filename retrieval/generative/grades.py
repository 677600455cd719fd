"""Graded candidate lists for listwise DPO and RSP negatives, built only from rows before the cutoff.

Each training window predicts row ``e``; its *next window* ``W`` is the rows from ``e`` on within
``next_window_days`` (0: the same timestamp, i.e. the basket); rows sharing ``e``'s timestamp
count as ``W`` too, never as older purchases or negatives. Slots, best first (grade 3..0):

* several behaviour types (Taobao): the example counts only when row ``e`` is a target behaviour;
  3 = that item, 2 = a cart/favourite item of ``W``, 1 = a viewed item of ``W`` (grades from
  ``RankGRConfig.behavior_grades``);
* one behaviour type (completejourney purchases): 3 = the item of row ``e``, 2 = a repeat of an
  older purchase not in ``W``, 1 = a popular item of one of the user's own categories that the user
  never bought;
* always 0 = a uniformly random item of the grade-3 item's category that the user never touched.

A missing slot is -1. RSP lists put the grade-3 item first, then the other slots, then hard
negatives sharing an SID prefix with it, then popularity-sampled items; none is in ``W``."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from retrieval.generative.data import Sequences
from retrieval.generative.vocab import SidVocab


class ItemSampler:
    """Category, popularity and SID-prefix look-ups over the vocabulary's item codes."""

    def __init__(self, vocab: SidVocab, category_of: Mapping[str, str], pop: np.ndarray):
        cats = np.array([category_of.get(i) or "" for i in vocab.item_ids], dtype=object)
        _, self.cat = np.unique(cats, return_inverse=True)
        self.cat = self.cat.astype(np.int64)
        self.pop = np.asarray(pop, np.float64)
        self._cat_order = np.lexsort((-self.pop, self.cat))
        self._cat_start = np.searchsorted(self.cat[self._cat_order], np.arange(int(self.cat.max()) + 2))
        w = self.pop + 1.0
        self._cat_cum = np.zeros(len(self._cat_order) + 1)
        self._cat_cum[1:] = np.cumsum(w[self._cat_order])
        p = self.pop + 1e-3
        self._pop_cum = np.cumsum(p) / p.sum()
        digits = vocab.sids.codes
        self._prefix = []
        for level in (2, 1):
            key = np.zeros(len(digits), np.int64)
            for d in range(level):
                key = key * (int(digits[:, d].max()) + 1) + digits[:, d]
            order = np.argsort(key, kind="stable")
            self._prefix.append((key, order, key[order]))

    def in_category(self, c: int, rng: np.random.Generator, weighted: bool) -> int:
        lo, hi = int(self._cat_start[c]), int(self._cat_start[c + 1])
        if hi <= lo:
            return -1
        if not weighted:
            return int(self._cat_order[rng.integers(lo, hi)])
        x = rng.uniform(self._cat_cum[lo], self._cat_cum[hi])
        j = min(max(int(np.searchsorted(self._cat_cum, x, side="right")) - 1, lo), hi - 1)
        return int(self._cat_order[j])

    def popular(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.minimum(np.searchsorted(self._pop_cum, rng.random(n)), len(self.pop) - 1)

    def siblings(self, code: int, rng: np.random.Generator, n: int) -> list[int]:
        """Up to ``n`` items sharing the first two SID digits with ``code``, then the first one."""
        out: list[int] = []
        for key, order, sorted_key in self._prefix:
            lo, hi = np.searchsorted(sorted_key, key[code]), np.searchsorted(sorted_key, key[code], side="right")
            if hi - lo > 1:
                out += order[rng.integers(lo, hi, size=n)].tolist()
        return [c for c in dict.fromkeys(out) if c != code][:n]


def _pick(rng, pool: list[int]) -> int:
    return pool[int(rng.integers(len(pool)))] if pool else -1


def _fresh(sampler: ItemSampler, categories, rng, weighted: bool, avoid: set[int], tries: int = 4) -> int:
    """An item of a category drawn from ``categories`` that is not in ``avoid`` (-1 after ``tries``)."""
    for _ in range(tries):
        c = sampler.in_category(int(categories[rng.integers(len(categories))]), rng, weighted)
        if c >= 0 and c not in avoid:
            return c
    return -1


def graded_lists(seqs: Sequences, windows: np.ndarray, sampler: ItemSampler, grades: Mapping[str, int], *,
                 next_window_days: float, rsp_hard: int, rsp_random: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``dpo`` (B, 4) item codes by grade 3, 2, 1, 0 and ``rsp`` (B, 4 + hard + random), positive first;
    -1 = empty. A window that is not an example has an all -1 row in both."""
    bgrade = np.zeros(len(seqs.beh_names) + 1, np.int64)
    for i, name in enumerate(seqs.beh_names):
        bgrade[i + 1] = grades.get(name, 1)
    multi = seqs.multi_behaviour
    R = 4 + rsp_hard + rsp_random
    dpo = np.full((len(windows), 4), -1, np.int64)
    rsp = np.full((len(windows), R), -1, np.int64)
    for j, (u, _, e) in enumerate(windows.tolist()):
        if multi and seqs.beh[e] != seqs.target_beh:
            continue
        lo, hi = int(seqs.ptr[u]), int(seqs.ptr[u + 1])
        stop = e + int(np.searchsorted(seqs.days[e:hi], seqs.days[e] + next_window_days, side="right"))
        w_rows = range(e, max(stop, e + 1))
        basket = lo + int(np.searchsorted(seqs.days[lo:e], seqs.days[e]))  # rows sharing e's timestamp
        in_w = {int(seqs.codes[r]) for r in range(basket, max(stop, e + 1))}
        before = seqs.codes[lo:basket]
        seen = set(before.tolist()) | in_w
        pos = int(seqs.codes[e])
        slots = [pos, -1, -1, -1]
        if multi:
            best: dict[int, int] = {}
            for r in w_rows:
                c = int(seqs.codes[r])
                best[c] = max(best.get(c, 0), int(bgrade[seqs.beh[r]]))
            slots[1] = _pick(rng, [c for c, g in best.items() if g == 2 and c != pos])
            slots[2] = _pick(rng, [c for c, g in best.items() if g == 1 and c != pos])
        elif len(before):
            older = [c for c in dict.fromkeys(before[seqs.beh[lo:basket] == seqs.target_beh].tolist())
                     if c not in in_w]
            slots[1] = _pick(rng, older)
            slots[2] = _fresh(sampler, sampler.cat[before], rng, True, seen)
        slots[3] = _fresh(sampler, sampler.cat[[pos]], rng, False, seen | {slots[2]})
        dpo[j] = slots
        negs = [c for c in slots[1:] if c >= 0]
        negs += [c for c in sampler.siblings(pos, rng, rsp_hard) if c not in in_w]
        negs += [int(c) for c in sampler.popular(rng, rsp_random) if int(c) not in in_w]
        row = list(dict.fromkeys([pos] + [c for c in negs if c != pos]))[:R]
        rsp[j, :len(row)] = row
    return dpo, rsp
