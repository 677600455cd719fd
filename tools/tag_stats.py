"""Statistics behind the tag candidate tools, computed once per dataset and date, and the tools themselves.

Every figure comes from behaviour rows strictly before ``now`` (the run's date): a row at or after it
never reaches a tool. A *product type* is the catalogue phrase of an item (``product_type``: the lower-case
first comma part of its title, when that is 2–4 plain words); a *basket* is one user's rows at one
timestamp. The four tools, each returning ``Candidate`` s best first:

* ``own_types``: the user's own product types, one per category per round, by purchase count and recency;
* ``complements``: types bought in the same baskets as the user's top types, ranked by **lift**
  (co-occurrence over what independence predicts), with a minimum support, never bought by the user;
* ``seasonal``: types whose share of purchases rises in the coming weeks of an earlier year, or in the
  weeks before the same holiday of an earlier year, when the data covers them; otherwise the current
  trend (share in the last weeks over the share in the weeks before);
* ``collaborative_new``: categories that similar households buy and this one never has (item-item
  cosine on the user × category count matrix), each named by its most bought product type.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
from scipy import sparse

from agents.expert import TAG_PATTERN
from behavior.schema import Dataset
from core.dates import check_date

_TAG_RE = re.compile(TAG_PATTERN)

#: minimum number of shared baskets for a complement pair
MIN_SUPPORT = 20
#: how many of the user's top types complements are computed from
COMPLEMENT_SOURCES = 10
#: the seasonal horizon: "the coming weeks"
HORIZON_DAYS = 28
#: trend fallback: the recent window and the window it is compared with
TREND_RECENT_DAYS = 28
TREND_BASE_DAYS = 84
#: minimum purchases of a type in the rising window for it to count as seasonal
MIN_SEASONAL_COUNT = 20
#: days before a holiday that count as its run-up
HOLIDAY_LEAD_DAYS = 14


@dataclass(frozen=True)
class Candidate:
    """One tag candidate: a catalogue phrase, its category, the tool that found it, the tool's score
    and a short human-readable reason (data-derived text: fence it before it reaches a prompt)."""

    phrase: str
    category: str
    tool: str
    score: float
    why: str


def title_phrase(title: str | None) -> str:
    """An item title's first part, lower-cased, with anything but letters, apostrophes and hyphens
    turned into single spaces."""
    phrase = re.sub(r"[^a-z' -]", " ", (title or "").split(",")[0].lower())
    return re.sub(r"\s+", " ", phrase).strip()


def product_type(title: str | None) -> str | None:
    """The catalogue phrase of an item title, or None when it is not 2–4 plain words."""
    phrase = title_phrase(title)
    return phrase if _TAG_RE.match(phrase) else None


@dataclass
class TagStats:
    """Purchase statistics at ``now``; build with ``TagStats.build`` (cached per dataset and date)."""

    now: datetime
    types: list[str]  # index -> phrase
    type_category: list[str]  # index -> the category the phrase is most bought in
    users: dict[str, int]  # user id -> row of the count matrices
    categories: list[str]
    user_type: sparse.csr_matrix  # users × types, purchase counts
    user_type_last: dict[str, dict[int, datetime]]  # user -> type -> last purchase
    user_cat: sparse.csr_matrix  # users × categories, purchase counts
    cooc: sparse.csr_matrix  # types × types, shared baskets
    type_baskets: np.ndarray  # baskets holding each type
    n_baskets: int
    category_top_type: dict[str, int]  # category -> its most bought type
    rows: pl.DataFrame  # user_id, ts, t (type index), c (category index): the rows the tools read
    _cat_sim: np.ndarray | None = field(default=None, repr=False)
    _seasonal: list[Candidate] | None = field(default=None, repr=False)
    _type_cat: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def build(cls, dataset: Dataset, now: Any, *, behaviors: Sequence[str] = ("purchase",)) -> TagStats:
        now = _as_datetime(now)
        key = (id(dataset), now, tuple(behaviors))
        hit = _CACHE.get(key)
        if hit is not None and hit[0] is dataset:
            return hit[1]
        stats = _build(dataset, now, tuple(behaviors))
        _CACHE.clear()  # one dataset and date at a time; the statistics are large
        _CACHE[key] = (dataset, stats)
        return stats

    def user_row(self, user_id: str) -> int | None:
        return self.users.get(str(user_id))

    def user_type_counts(self, user_id: str) -> dict[int, int]:
        r = self.user_row(user_id)
        if r is None:
            return {}
        row = self.user_type.getrow(r)
        return dict(zip(row.indices.tolist(), row.data.astype(int).tolist(), strict=True))

    def type_category_codes(self) -> np.ndarray:
        """``type_category`` as one integer code per type (equal codes, equal categories)."""
        if self._type_cat is None:
            ix = {c: i for i, c in enumerate(self.categories)}
            self._type_cat = np.array([ix.get(c, -1 - i) for i, c in enumerate(self.type_category)], dtype=np.int64)
        return self._type_cat

    def category_similarity(self) -> np.ndarray:
        """Item-item cosine between categories over the users × categories count matrix."""
        if self._cat_sim is None:
            m = self.user_cat.tocsc().astype(np.float64)
            norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=0))).ravel()
            norms[norms == 0] = 1.0
            m = m @ sparse.diags(1.0 / norms)
            sim = (m.T @ m).toarray()
            np.fill_diagonal(sim, 0.0)
            self._cat_sim = sim
        return self._cat_sim


_CACHE: dict[tuple, tuple[Dataset, TagStats]] = {}


def _build(dataset: Dataset, now: datetime, behaviors: tuple[str, ...]) -> TagStats:
    items = dataset.items.select("item_id", pl.col("category").fill_null(""), "title")
    items = items.with_columns(pl.col("title").map_elements(product_type, return_dtype=pl.Utf8).alias("phrase"))
    rows = (dataset.behaviors.filter(pl.col("behavior").is_in(list(behaviors)) & (pl.col("ts") < now))
            .select("user_id", "item_id", "ts")
            .join(items.select("item_id", "category", "phrase"), on="item_id", how="inner")
            .filter(pl.col("category") != ""))
    categories = sorted(set(rows["category"].to_list()))
    cat_ix = {c: i for i, c in enumerate(categories)}
    users = sorted(set(rows["user_id"].to_list()))
    user_ix = {u: i for i, u in enumerate(users)}

    typed = rows.filter(pl.col("phrase").is_not_null())
    # a phrase's category: the one it is most bought in (ties: alphabetical)
    tc = (typed.group_by("phrase", "category").len()
          .sort(["phrase", "len", "category"], descending=[False, True, False])
          .group_by("phrase", maintain_order=True).first())
    types = tc["phrase"].to_list()
    type_ix = {t: i for i, t in enumerate(types)}
    type_category = tc["category"].to_list()

    rows = rows.with_columns(
        pl.col("user_id").replace_strict(user_ix, return_dtype=pl.Int64).alias("u"),
        pl.col("category").replace_strict(cat_ix, return_dtype=pl.Int64).alias("c"),
        pl.col("phrase").replace_strict(type_ix, default=None, return_dtype=pl.Int64).alias("t"),
    )
    n_u, n_c, n_t = len(users), len(categories), len(types)
    uc = rows.group_by("u", "c").len()
    user_cat = sparse.csr_matrix((uc["len"].to_numpy().astype(np.float64), (uc["u"].to_numpy(), uc["c"].to_numpy())),
                                 shape=(n_u, n_c))
    tr = rows.filter(pl.col("t").is_not_null())
    ut = tr.group_by("u", "t").agg(pl.len().alias("n"), pl.col("ts").max().alias("last"))
    user_type = sparse.csr_matrix((ut["n"].to_numpy().astype(np.float64), (ut["u"].to_numpy(), ut["t"].to_numpy())),
                                  shape=(n_u, n_t))
    last: dict[str, dict[int, datetime]] = {}
    for u, t, ts in ut.select("u", "t", "last").iter_rows():
        last.setdefault(users[u], {})[t] = ts

    bt = (tr.select("u", "ts", "t").unique()
          .with_columns(pl.struct("u", "ts").rank("dense").cast(pl.Int64).alias("b") - 1))
    n_b = int(bt["b"].max() + 1) if bt.height else 0
    basket = sparse.csr_matrix((np.ones(bt.height), (bt["b"].to_numpy(), bt["t"].to_numpy())), shape=(n_b, n_t))
    cooc = (basket.T @ basket).tocsr()
    type_baskets = np.asarray(basket.sum(axis=0)).ravel()

    ct = tr.group_by("c", "t").len().sort(["c", "len", "t"], descending=[False, True, False])
    top = ct.group_by("c", maintain_order=True).first()
    category_top_type = {categories[c]: t for c, t in top.select("c", "t").iter_rows()}
    return TagStats(now=now, types=types, type_category=type_category, users=user_ix, categories=categories,
                    user_type=user_type, user_type_last=last, user_cat=user_cat, cooc=cooc,
                    type_baskets=type_baskets, n_baskets=n_b, category_top_type=category_top_type,
                    rows=rows.select("u", "ts", "t", "c"))


# ------------------------------------------------------------------------------------------------
# the tools

def own_types(stats: TagStats, user_id: str, n: int = 40) -> list[Candidate]:
    """The user's own product types, one per category per round: the categories by the user's purchase
    count (ties: most recent), each contributing its next type by count (ties: most recent), so the
    first types cover as many of the user's categories as the frequent-categories list does."""
    counts = stats.user_type_counts(user_id)
    last = stats.user_type_last.get(str(user_id), {})
    by_cat: dict[str, list[int]] = {}
    for t in sorted(counts, key=lambda t: (-counts[t], -last[t].timestamp(), stats.types[t])):
        by_cat.setdefault(stats.type_category[t], []).append(t)
    cats = sorted(by_cat, key=lambda c: (-sum(counts[t] for t in by_cat[c]),
                                         -max(last[t] for t in by_cat[c]).timestamp(), c))
    order: list[int] = []
    for rnd in range(max((len(v) for v in by_cat.values()), default=0)):
        order += [by_cat[c][rnd] for c in cats if rnd < len(by_cat[c])]
    out = []
    for t in order[:n]:
        days = (stats.now - last[t]).days
        out.append(Candidate(stats.types[t], stats.type_category[t], "own", float(counts[t]),
                             f"bought {counts[t]}x, last {days} days ago"))
    return out


def type_lift(stats: TagStats, a: int, b: Any, both: Any) -> Any:
    """Lift of types ``a`` and ``b`` that share ``both`` baskets: P(a, b) / (P(a) P(b)); ``b`` and
    ``both`` may be arrays (one lift per pair)."""
    return both * stats.n_baskets / (stats.type_baskets[a] * stats.type_baskets[b])


def complements(stats: TagStats, user_id: str, n: int = 20, *, sources: int = COMPLEMENT_SOURCES,
                min_support: int = MIN_SUPPORT) -> list[Candidate]:
    """Types bought in the same baskets as the user's top ``sources`` types, by lift, never bought by
    the user and in another category than their source (a variant of the same product is not a
    complement); each keeps the source type with the highest lift."""
    counts = stats.user_type_counts(user_id)
    if not counts or stats.n_baskets == 0:
        return []
    top = sorted(counts, key=lambda t: (-counts[t], stats.types[t]))[:sources]
    bought = np.fromiter(counts, dtype=np.int64, count=len(counts))
    cat, cooc = stats.type_category_codes(), stats.cooc
    best: dict[int, tuple[float, int, int]] = {}  # type -> (lift, source, support)
    for a in top:
        lo, hi = cooc.indptr[a], cooc.indptr[a + 1]
        b, both = cooc.indices[lo:hi], cooc.data[lo:hi]
        keep = (b != a) & (both >= min_support) & (cat[b] != cat[a]) & ~np.isin(b, bought)
        b, both = b[keep], both[keep]
        lifts = type_lift(stats, a, b, both)  # the same float64 arithmetic as for one pair
        for t, lift, n_both in zip(b.tolist(), lifts.tolist(), both.tolist(), strict=True):
            if t not in best or lift > best[t][0]:
                best[t] = (lift, a, int(n_both))
    order = sorted(best, key=lambda b: (-best[b][0], stats.types[b]))[:n]
    return [Candidate(stats.types[b], stats.type_category[b], "complement", round(float(best[b][0]), 4),
                      f"bought with {stats.types[best[b][1]]} (lift {best[b][0]:.1f}, {best[b][2]} baskets)")
            for b in order]


def collaborative_new(stats: TagStats, user_id: str, n: int = 25) -> list[Candidate]:
    """Categories this household never bought, scored by item-item cosine with the categories it buys
    (weighted by log counts), each named by the category's most bought product type."""
    r = stats.user_row(user_id)
    if r is None:
        return []
    row = stats.user_cat.getrow(r)
    weights = np.zeros(len(stats.categories))
    weights[row.indices] = np.log1p(row.data)
    sim = stats.category_similarity()
    scores = weights @ sim
    scores[row.indices] = -np.inf
    out = []
    for c in np.argsort(-scores, kind="stable"):
        if len(out) >= n or not np.isfinite(scores[c]) or scores[c] <= 0:
            break
        cat = stats.categories[c]
        t = stats.category_top_type.get(cat)
        if t is None:
            continue
        nearest = row.indices[np.argmax(sim[row.indices, c] * weights[row.indices])]
        out.append(Candidate(stats.types[t], cat, "collaborative", round(float(scores[c]), 4),
                             f"households who buy {stats.categories[nearest].lower()} buy {cat.lower()}"))
    return out


def seasonal(stats: TagStats, user_id: str | None = None, n: int = 15) -> list[Candidate]:
    """Types whose share rises in the coming weeks (the same weeks of an earlier year, the run-up to
    the same holiday in an earlier year, or else the current trend); the user's own categories first."""
    ranked = _seasonal_ranking(stats)
    if user_id is None:
        return ranked[:n]
    r = stats.user_row(user_id)
    mine = set() if r is None else {stats.categories[c] for c in stats.user_cat.getrow(r).indices}
    return sorted(ranked, key=lambda c: (c.category not in mine, -c.score, c.phrase))[:n]


def _share(rows: pl.DataFrame, start: datetime, end: datetime) -> dict[int, tuple[int, float]]:
    w = rows.filter((pl.col("ts") >= start) & (pl.col("ts") < end) & pl.col("t").is_not_null())
    if w.height == 0:
        return {}
    g = w.group_by("t").len()
    return {t: (k, k / w.height) for t, k in g.iter_rows()}


def _rising(rows: pl.DataFrame, window: tuple[datetime, datetime], base: tuple[datetime, datetime],
            label: str, types: list[str], categories: list[str]) -> list[Candidate]:
    now_share, base_share = _share(rows, *window), _share(rows, *base)
    if not now_share or not base_share:
        return []
    floor = 1.0 / max(sum(k for k, _ in base_share.values()), 1)
    out = []
    for t, (k, s) in now_share.items():
        if k < MIN_SEASONAL_COUNT:
            continue
        ratio = s / max(base_share.get(t, (0, 0.0))[1], floor)
        if ratio > 1.0:
            out.append(Candidate(types[t], categories[t], "season", round(math.log(ratio), 4),
                                 f"share x{ratio:.1f} {label}"))
    return sorted(out, key=lambda c: (-c.score, c.phrase))


def _covered(stats: TagStats, start: datetime) -> bool:
    first = stats.rows["ts"].min()
    return first is not None and first <= start


def _seasonal_ranking(stats: TagStats) -> list[Candidate]:
    if stats._seasonal is not None:
        return stats._seasonal
    from core.calendar import holiday_dates, holidays_between

    rows, now, h = stats.rows, stats.now, timedelta(days=HORIZON_DAYS)
    found: dict[str, Candidate] = {}

    def add(cands: list[Candidate]) -> None:
        for c in cands:
            if c.phrase not in found or c.score > found[c.phrase].score:
                found[c.phrase] = c

    last_year = now - timedelta(days=364)  # same weekday a year earlier
    if _covered(stats, last_year - h):
        add(_rising(rows, (last_year, last_year + h), (last_year - h, last_year),
                    f"in the {HORIZON_DAYS} days after {last_year:%b %d} last year", stats.types, stats.type_category))
    for when, name in holidays_between(now.date(), (now + h).date()):
        before = [d for d, nm in holiday_dates(when.year - 1) if nm == name]
        if not before:
            continue
        end = datetime.combine(before[0], datetime.min.time())
        start = end - timedelta(days=HOLIDAY_LEAD_DAYS)
        if _covered(stats, start - h) and end <= now:
            add(_rising(rows, (start, end), (start - h, start), f"before {name} last year",
                        stats.types, stats.type_category))
    if not found:  # the data does not cover an earlier year: the current trend
        recent = now - timedelta(days=TREND_RECENT_DAYS)
        add(_rising(rows, (recent, now), (recent - timedelta(days=TREND_BASE_DAYS), recent),
                    f"in the last {TREND_RECENT_DAYS} days vs the {TREND_BASE_DAYS} before",
                    stats.types, stats.type_category))
    stats._seasonal = sorted(found.values(), key=lambda c: (-c.score, c.phrase))
    return stats._seasonal


def as_dicts(cands: Sequence[Candidate]) -> list[dict]:
    return [{"phrase": c.phrase, "category": c.category, "tool": c.tool, "score": c.score, "why": c.why}
            for c in cands]


def _as_datetime(now: Any) -> datetime:
    """``now`` as a naive datetime (a date is its midnight; a string is ISO), range-checked."""
    if isinstance(now, str):
        now = datetime.fromisoformat(now)
    elif isinstance(now, date) and not isinstance(now, datetime):
        now = datetime.combine(now, datetime.min.time())
    if not isinstance(now, datetime):
        raise TypeError(f"now: expected a date, datetime or ISO string, got {type(now).__name__}")
    check_date(now, "now")
    return now.replace(tzinfo=None)
