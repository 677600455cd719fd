"""Hierarchical behaviour compression (RecGPT V1), from a user's raw history to a compact text block
that fits a token budget, plus a structured summary for the agents.

Stages
------
1. **Behaviour level: filter by confidence.** Each behaviour type has a confidence weight
   (``behavior.schema.DEFAULT_WEIGHTS``: purchase 1.0 ... click 0.2). Events whose weight is below
   ``min_weight`` (default 0.25: plain clicks go, item detail views stay, as the design notes ask), or
   whose type is not in ``keep_types`` when that is set, are removed.
2. **Sequence level.**

   * *Item text condensed to core attributes.* An item becomes a short lower-case label: its title
     without trailing ``, <attribute value>`` segments (on Complete Journey ``Kids Cereal, 14.5 oz``
     -> ``kids cereal``; the package size is a free attribute), capped at ``max_core_words`` words.
     Punctuation-only words (``-``) go too. Category path, brand, price and attributes are left
     out. Labels are unique within one user's block: items whose labels collide are numbered
     ``#2``, ``#3`` in item-id order (``condensed soup``, ``condensed soup #2``), which is shorter
     than lengthening them with size or brand, and a distinct item is never merged into another.
   * *Time buckets that coarsen with age*, relative to an injectable ``now``: a **day** bucket
     (``2017-12-24``) for events less than ``day_days`` (28) days old, a **month** bucket
     (``2017-11``) for those less than ``month_days`` (365) days old, a **year** bucket (``2016``)
     beyond. 28 days matches the arbiter's "bought in the last few weeks" freshness rule and the
     evaluation's 28-day test window, so recent events keep their exact date; a year of months keeps
     seasonality (RecGPT's planner reasons about seasons and holidays); older history only needs to
     say "this was a habit". A month or year bucket holds only events old enough for it, so the
     buckets never overlap in time; one whose events all fall on a single day is labelled with
     that day (MovieLens users often rate dozens of films in one sitting).
   * *Grouping by (bucket, behaviour), then reverse grouping by item with counts*::

         2017-11(purchase: apple sauce x3 @28, honey; cart: crushed ice) | 2017-12-24(purchase: milk)

     Buckets run oldest to newest; inside a bucket, behaviours by confidence; inside a behaviour,
     items by count (then most recent first, then label). ``xN`` is the number of events; a search
     with a query reads ``"query" label``.
3. **Budget.** Tokens are counted with the injected counter (the configured LLM's tokenizer, see
   ``behavior.tokens``). If the block is over ``budget``, whole entries (one item in one
   (bucket, behaviour) group) are dropped in the order *lowest confidence first, then oldest first*
   (a view never outlives a purchase; among equals, older goes first), and the block starts with
   ``omitted(events: E, items: I)`` saying how much is gone. The smallest number of dropped entries
   that fits is found by binary search, every candidate measured with the real tokenizer, so the
   budget is never exceeded. If not even the ``omitted(...)`` line fits, the block is empty.

What "lossless" means
---------------------
Within the budget the block is lossless at the item level: every distinct item that survives stage 1
appears, under a label unique to it, with its event counts (summing its ``xN`` over buckets gives the
number of its events) and its most recent date. The date survives bucketing like this: a day bucket
is the date; when an item's latest appearance is in a month bucket it carries ``@DD`` and in a year
bucket ``@MM-DD``, so the full date can be read back (:func:`parse_block` does this). Only that
latest appearance is annotated, to save tokens. What is *not* kept: times of day, the order of events
within a bucket, quantities/ratings (``value``) and the attributes stage 2 leaves out. When entries
must be dropped for the budget, the annotations are recomputed over what is left, so every item still
shown carries the latest date that is still shown, and ``omitted(...)`` and the stats say what went.

Measurement
-----------
"Raw" is one line per event: timestamp, behaviour and the full item text (title | category path |
brand | price | free attributes not already in the title or path), plus the query and value when
present. ``stats`` carries the tokens of the raw lines, of the raw lines that pass stage 1, of the
full compressed block and of the final (budgeted) block. Per-stage reductions: behaviour level =
1 - filtered/raw; sequence level = 1 - compressed/filtered; overall = 1 - compressed/raw, where
"compressed" is the full (lossless) block; what the budget then drops is reported separately.

Everything is deterministic: ties are broken by label, item id and behaviour name, never by hash or
dict order.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from behavior.schema import DEFAULT_WEIGHTS, Dataset

CountTokens = Callable[[str], int]

#: Default budget for the behaviour block. The embedded model (SmolLM2-135M) has an 8,192-token
#: context; half of it goes to the history and the rest to the system prompt, user attributes,
#: environment and the model's answer. RecGPT's own figure is a 128k context (``RECGPT_CONTEXT``).
DEFAULT_BUDGET = 4096
LOCAL_CONTEXT = 8192
RECGPT_CONTEXT = 131072

Granularity = Literal["day", "month", "year"]
_GRAN_RANK = {"year": 0, "month": 1, "day": 2}


class CompressionConfig(BaseModel):
    """Settings of the compressor; every threshold is here, none is hidden in the code."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: token budget for the text block (measured with the injected counter)
    budget: int = Field(DEFAULT_BUDGET, ge=0)
    #: behaviour level: keep events whose type weight is at least this (0.25 drops clicks only)
    min_weight: float = 0.25
    #: behaviour level: if set, keep only these types (in addition to the weight rule)
    keep_types: tuple[str, ...] | None = None
    #: confidence weight per behaviour type; types not listed get ``default_weight``
    weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    default_weight: float = 0.5
    #: events younger than this many days get a day bucket
    day_days: int = Field(28, ge=0)
    #: events younger than this (and not in a day bucket) get a month bucket; older a year bucket
    month_days: int = Field(365, ge=0)
    #: core label length cap, in words
    max_core_words: int = Field(10, ge=1)
    #: purchases younger than this many days are listed in ``summary.recent_purchases``
    recent_days: int = Field(28, ge=0)
    top_categories: int = Field(10, ge=0)
    max_recent_purchases: int = Field(50, ge=0)

    @model_validator(mode="after")
    def _order(self) -> CompressionConfig:
        if self.month_days < self.day_days:
            raise ValueError("month_days must be at least day_days")
        return self

    def weight(self, behavior: str) -> float:
        return self.weights.get(behavior, self.default_weight)

    def keeps(self, behavior: str) -> bool:
        if self.keep_types is not None and behavior not in self.keep_types:
            return False
        return self.weight(behavior) >= self.min_weight


# ----- output models ---------------------------------------------------------------------------------
class CategoryCount(BaseModel):
    category: str
    count: int


class RecentPurchase(BaseModel):
    item_id: str
    label: str
    title: str
    last_date: date
    days_ago: int
    count: int


class ItemSummary(BaseModel):
    """One distinct item as the block shows it: its label, retained events and latest retained date."""

    item_id: str
    label: str
    count: int
    last_date: date
    behaviors: dict[str, int]


class HistorySummary(BaseModel):
    """What the agents get besides the text: counts, categories and recency."""

    behavior_counts: dict[str, int]
    top_categories: list[CategoryCount]
    first_date: date | None
    last_date: date | None
    days_since_last: int | None
    recent_purchases: list[RecentPurchase]


class BudgetDrop(BaseModel):
    entries: int = 0
    events: int = 0
    items: int = 0
    by_behavior: dict[str, int] = Field(default_factory=dict)


class CompressionStats(BaseModel):
    budget: int
    raw_tokens: int
    filtered_tokens: int
    compressed_full_tokens: int
    compressed_tokens: int
    raw_within_budget: bool
    #: the full lossless block fits: nothing was dropped for the budget
    within_budget: bool
    events_total: int
    events_kept: int
    events_retained: int
    distinct_items_total: int
    distinct_items_kept: int
    distinct_items_retained: int
    #: events removed by the behaviour-level filter, by type
    filtered_out: dict[str, int]
    dropped_by_budget: BudgetDrop
    reduction_behavior_level: float
    reduction_sequence_level: float
    reduction_overall: float
    buckets: dict[str, int]


class CompressedHistory(BaseModel):
    user_id: str | None
    now: datetime
    text: str
    summary: HistorySummary
    stats: CompressionStats
    #: every item the block shows, by label (the key to read the block back at the item level)
    items: list[ItemSummary]


# ----- labels ----------------------------------------------------------------------------------------
_SEP = re.compile(r'[()\[\]{};|,@#"\s]+')
_TRAILING_COUNT = re.compile(r" x(\d+)$")
_WORDLIKE = re.compile(r"\w")


def _clean(s: str | None) -> str:
    """Lower-case, separators of the block format replaced by spaces, whitespace collapsed."""
    return _SEP.sub(" ", (s or "").lower()).strip()


def _finish(label: str) -> str:
    # a label must not end like a count suffix (" x3"), or the block could not be read back
    return _TRAILING_COUNT.sub(r" x \1", label)


def core_label(title: str, attributes: dict[str, str], max_words: int) -> str:
    """The item's title without trailing ``, <attribute value>`` parts, cleaned and capped."""
    parts = (title or "").split(",")
    values = {str(v).strip().lower() for v in attributes.values() if v}
    while len(parts) > 1 and parts[-1].strip().lower() in values:
        parts.pop()
    words = [w for w in _clean(",".join(parts)).split() if _WORDLIKE.search(w)]
    return _finish(" ".join(words[:max_words]))


def unique_labels(items: dict[str, tuple[str, dict[str, str]]], max_words: int) -> dict[str, str]:
    """Labels for ``item_id -> (title, attributes)``, unique among these items.

    Items whose core labels collide are numbered: the first (in item-id order) keeps the bare label,
    the others get ``#2``, ``#3``... Numbering is shorter than lengthening the label with the size
    or brand, and the size or brand rarely matters to an intent; ``CompressedHistory.items`` maps
    every label back to its item."""
    groups: dict[str, list[str]] = defaultdict(list)
    for iid in sorted(items):
        title, attrs = items[iid]
        groups[core_label(title, attrs, max_words) or _clean(f"item {iid}")].append(iid)
    out: dict[str, str] = {}
    for label, members in groups.items():
        for k, iid in enumerate(members):
            out[iid] = label if k == 0 else f"{label} #{k + 1}"
    return out


# ----- raw text --------------------------------------------------------------------------------------
def full_item_text(title: str, path: str, brand: str | None, price: float | None,
                   attributes: dict[str, str]) -> str:
    """The complete item record as one line (what a naive serialiser would send)."""
    parts = [title or ""]
    if path:
        parts.append(path)
    if brand:
        parts.append(brand)
    if price is not None:
        parts.append(f"price {price:g}")
    shown = " ".join(parts).lower()
    extra = [f"{k}={v}" for k, v in attributes.items() if v and str(v).lower() not in shown]
    if extra:
        parts.append(", ".join(extra))
    return " | ".join(parts)


def _raw_line(ts: datetime, behavior: str, text: str, query: str | None, value: float | None) -> str:
    line = f"{ts:%Y-%m-%d %H:%M:%S} {behavior} {text}"
    if query:
        line += f' query="{query}"'
    if value is not None:
        line += f" value={value:g}"
    return line


# ----- buckets ---------------------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class Bucket:
    start: date
    rank: int
    label: str
    granularity: str


def _day_bucket(d: date) -> Bucket:
    return Bucket(d, _GRAN_RANK["day"], d.isoformat(), "day")


def bucket_of(ts: datetime, now: date, config: CompressionConfig) -> Bucket:
    d = ts.date()
    age = max(0, (now - d).days)
    if age < config.day_days:
        return _day_bucket(d)
    if age < config.month_days:
        return Bucket(date(d.year, d.month, 1), _GRAN_RANK["month"], f"{d.year:04d}-{d.month:02d}", "month")
    return Bucket(date(d.year, 1, 1), _GRAN_RANK["year"], f"{d.year:04d}", "year")


@dataclass
class _Entry:
    bucket: Bucket
    behavior: str
    weight: float
    item_id: str
    query: str | None
    label: str
    count: int
    last_ts: datetime


def _entry_text(e: _Entry, annotate: bool) -> str:
    s = f'"{_clean(e.query)}" {e.label}' if e.query else e.label
    if e.count > 1:
        s += f" x{e.count}"
    if annotate:
        d = e.last_ts.date()
        s += f" @{d.day:02d}" if e.bucket.granularity == "month" else f" @{d.month:02d}-{d.day:02d}"
    return s


def render(entries: list[_Entry], keep: list[bool], omitted: tuple[int, int] | None = None) -> str:
    """The block for the entries flagged in ``keep`` (``entries`` in display order)."""
    latest: dict[str, date] = {}
    for e, k in zip(entries, keep, strict=True):
        if k:
            d = e.last_ts.date()
            if d > latest.get(e.item_id, date.min):
                latest[e.item_id] = d
    segments: list[str] = []
    if omitted is not None:
        segments.append(f"omitted(events: {omitted[0]}, items: {omitted[1]})")
    cur_bucket: Bucket | None = None
    groups: list[str] = []
    cur_beh: str | None = None
    texts: list[str] = []

    def close_group() -> None:
        if cur_beh is not None and texts:
            groups.append(f"{cur_beh}: {', '.join(texts)}")

    def close_bucket() -> None:
        close_group()
        if cur_bucket is not None and groups:
            segments.append(f"{cur_bucket.label}({'; '.join(groups)})")

    for e, k in zip(entries, keep, strict=True):
        if not k:
            continue
        if e.bucket != cur_bucket:
            close_bucket()
            cur_bucket, groups, cur_beh, texts = e.bucket, [], None, []
        if e.behavior != cur_beh:
            close_group()
            cur_beh, texts = e.behavior, []
        annotate = e.bucket.granularity != "day" and e.last_ts.date() == latest[e.item_id]
        texts.append(_entry_text(e, annotate))
    close_bucket()
    return " | ".join(segments)


# ----- reading a block back --------------------------------------------------------------------------
class ParsedEntry(BaseModel):
    bucket: str
    granularity: Granularity
    behavior: str
    label: str
    query: str | None
    count: int
    #: the full date when the block states it (day bucket, or an ``@`` annotation), else None
    date: date | None


_SEGMENT = re.compile(r"^(?P<label>[0-9-]+|omitted)\((?P<body>.*)\)$")
_ENTRY = re.compile(r'^(?:"(?P<q>[^"]*)" )?(?P<label>.+?)(?: x(?P<n>\d+))?(?: @(?P<d>\d\d(?:-\d\d)?))?$')


def parse_block(text: str) -> list[ParsedEntry]:
    """Read a block back into entries (the ``omitted(...)`` segment is skipped)."""
    out: list[ParsedEntry] = []
    if not text:
        return out
    for seg in text.split(" | "):
        m = _SEGMENT.match(seg)
        if m is None:
            raise ValueError(f"not a bucket: {seg[:60]!r}")
        if m["label"] == "omitted":
            continue
        lab = m["label"]
        gran: Granularity = "day" if len(lab) == 10 else "month" if len(lab) == 7 else "year"
        for group in m["body"].split("; "):
            beh, _, rest = group.partition(": ")
            for ent in rest.split(", "):
                em = _ENTRY.match(ent)
                if em is None:
                    raise ValueError(f"not an entry: {ent!r}")
                when: date | None = None
                if gran == "day":
                    when = date.fromisoformat(lab)
                elif em["d"]:
                    parts = [int(p) for p in em["d"].split("-")]
                    y = int(lab[:4])
                    when = date(y, int(lab[5:7]), parts[0]) if gran == "month" else date(y, parts[0], parts[1])
                out.append(ParsedEntry(bucket=lab, granularity=gran, behavior=beh, label=em["label"],
                                       query=em["q"], count=int(em["n"] or 1), date=when))
    return out


# ----- the compressor --------------------------------------------------------------------------------
_ITEM_COLS = ("title", "category", "category_path", "brand", "price", "attributes")


def _as_datetime(now: datetime | date | str) -> datetime:
    if isinstance(now, str):
        now = datetime.fromisoformat(now)
    if isinstance(now, datetime):
        return now.replace(tzinfo=None) if now.tzinfo is None else now.astimezone(UTC).replace(tzinfo=None)
    return datetime(now.year, now.month, now.day)


def _with(config: CompressionConfig | None, overrides: dict[str, Any]) -> CompressionConfig:
    """``config`` with ``overrides`` applied (validated; unknown names are an error)."""
    cfg = config or CompressionConfig()
    if not overrides:
        return cfg
    return CompressionConfig(**{k: getattr(cfg, k) for k in cfg.model_fields_set}, **overrides)


def _newest_first(ts: datetime) -> int:
    """Sort key putting later times first (exact, no float or local-time conversion)."""
    return -((ts - datetime(1970, 1, 1)) // timedelta(microseconds=1))


def _ratio(num: int, den: int) -> float:
    return 1.0 - num / den if den else 0.0


def compress_history(
    history: pl.DataFrame,
    count_tokens: CountTokens,
    config: CompressionConfig | None = None,
    *,
    now: datetime | date | str | None = None,
    user_id: str | None = None,
    **overrides: Any,
) -> CompressedHistory:
    """Compress one user's history (``Dataset.history_with_items``: behaviours joined with item columns).

    ``overrides`` replace fields of ``config`` (``budget=1500``, ``weights=dataset.weights``).
    ``now`` defaults to the latest event. Events after ``now`` are not expected (take the history
    ``before=now``); if present they are bucketed as age 0."""
    cfg = _with(config, overrides)
    missing = [c for c in ("item_id", "behavior", "ts", *_ITEM_COLS) if c not in history.columns]
    if missing:
        raise ValueError(f"history lacks columns {missing}: pass Dataset.history_with_items(...)")
    order_cols = [c for c in ("ts", "item_id", "behavior", "query", "value") if c in history.columns]
    h = history.sort(order_cols, nulls_last=True, maintain_order=True)
    n = h.height
    ts_l: list[datetime] = h["ts"].to_list()
    beh_l: list[str] = h["behavior"].to_list()
    item_l: list[str] = h["item_id"].to_list()
    query_l: list[str | None] = h["query"].to_list() if "query" in h.columns else [None] * n
    value_l: list[float | None] = h["value"].to_list() if "value" in h.columns else [None] * n
    if user_id is None and "user_id" in h.columns and n:
        user_id = h["user_id"][0]
    now_dt = _as_datetime(now) if now is not None else (max(ts_l) if ts_l else datetime(1970, 1, 1))
    today = now_dt.date()

    # item records, once per distinct item
    info: dict[str, tuple[str, str, str, str | None, float | None, dict[str, str]]] = {}
    distinct = h.select("item_id", *_ITEM_COLS).unique("item_id", keep="first")
    cols = [distinct[c].to_list() for c in ("item_id", *_ITEM_COLS)]
    for iid, title, cat, path, brand, price, attributes in zip(*cols, strict=True):
        attrs = json.loads(attributes) if attributes else {}
        info[iid] = (title if title is not None else f"item {iid}", cat or "", path or "", brand, price,
                     {str(k): str(v) for k, v in attrs.items() if v is not None})
    full_text = {iid: full_item_text(t, p, b, pr, a) for iid, (t, _c, p, b, pr, a) in info.items()}

    # raw and stage 1
    raw_lines = [_raw_line(ts_l[i], beh_l[i], full_text[item_l[i]], query_l[i], value_l[i]) for i in range(n)]
    kept_idx = [i for i in range(n) if cfg.keeps(beh_l[i])]
    raw_tokens = count_tokens("\n".join(raw_lines))
    filtered_tokens = (raw_tokens if len(kept_idx) == n
                       else count_tokens("\n".join(raw_lines[i] for i in kept_idx)))
    filtered_out = Counter(beh_l[i] for i in range(n) if not cfg.keeps(beh_l[i]))

    # stage 2: labels, buckets, entries
    kept_items = sorted({item_l[i] for i in kept_idx})
    labels = unique_labels({iid: (info[iid][0], info[iid][5]) for iid in kept_items},
                           cfg.max_core_words)
    groups: dict[tuple, _Entry] = {}
    bucket_counts: Counter[str] = Counter()
    day_bucket: dict[date, Bucket] = {}  # one Bucket per distinct day, not per event
    raw_bucket = []
    for i in kept_idx:
        d = ts_l[i].date()
        b = day_bucket.get(d)
        if b is None:
            b = day_bucket[d] = bucket_of(ts_l[i], today, cfg)
        raw_bucket.append(b)
    span: dict[Bucket, set[date]] = defaultdict(set)
    for i, b in zip(kept_idx, raw_bucket, strict=True):
        if b.granularity != "day":
            span[b].add(ts_l[i].date())
    # a month or year bucket whose events all fall on one day is labelled with that day
    single = {b: _day_bucket(next(iter(days))) for b, days in span.items() if len(days) == 1}
    for i, b in zip(kept_idx, raw_bucket, strict=True):
        b = single.get(b, b)
        q = query_l[i] if query_l[i] and _clean(query_l[i]) else None
        key = (b, beh_l[i], item_l[i], q)
        e = groups.get(key)
        if e is None:
            groups[key] = _Entry(b, beh_l[i], cfg.weight(beh_l[i]), item_l[i], q, labels[item_l[i]], 1, ts_l[i])
        else:
            e.count += 1
            e.last_ts = max(e.last_ts, ts_l[i])
    for b in {k[0] for k in groups}:
        bucket_counts[b.granularity] += 1
    entries = sorted(groups.values(), key=lambda e: (e.bucket, -e.weight, e.behavior, -e.count,
                                                     _newest_first(e.last_ts), e.label, e.query or ""))

    # stage 3: budget
    all_keep = [True] * len(entries)
    full_block = render(entries, all_keep)
    full_tokens = count_tokens(full_block)
    keep = all_keep
    text, final_tokens = full_block, full_tokens
    drop = BudgetDrop()
    if full_tokens > cfg.budget and entries:
        keep, text, final_tokens, drop = _fit_budget(entries, set(kept_items), cfg.budget, count_tokens,
                                                     full_block, full_tokens)

    # items as shown
    per_item: dict[str, dict] = {}
    for e, k in zip(entries, keep, strict=True):
        if not k:
            continue
        s = per_item.setdefault(e.item_id, {"count": 0, "last": e.last_ts, "beh": Counter()})
        s["count"] += e.count
        s["beh"][e.behavior] += e.count
        s["last"] = max(s["last"], e.last_ts)
    items_out = [
        ItemSummary.model_construct(item_id=iid, label=labels[iid], count=s["count"], last_date=s["last"].date(),
                                    behaviors=dict(sorted(s["beh"].items())))  # built here: no validation
        for iid, s in sorted(per_item.items(), key=lambda kv: labels[kv[0]])
    ]
    if not text:
        items_out = []

    summary = _summary(ts_l, beh_l, item_l, kept_idx, info, labels, today, cfg)
    stats = CompressionStats(
        budget=cfg.budget,
        raw_tokens=raw_tokens,
        filtered_tokens=filtered_tokens,
        compressed_full_tokens=full_tokens,
        compressed_tokens=final_tokens,
        raw_within_budget=raw_tokens <= cfg.budget,
        within_budget=full_tokens <= cfg.budget,
        events_total=n,
        events_kept=len(kept_idx),
        events_retained=sum(s["count"] for s in per_item.values()) if text else 0,
        distinct_items_total=len(set(item_l)),
        distinct_items_kept=len(kept_items),
        distinct_items_retained=len(items_out),
        filtered_out=dict(sorted(filtered_out.items())),
        dropped_by_budget=drop,
        reduction_behavior_level=_ratio(filtered_tokens, raw_tokens),
        reduction_sequence_level=_ratio(full_tokens, filtered_tokens),
        reduction_overall=_ratio(full_tokens, raw_tokens),
        buckets={g: bucket_counts.get(g, 0) for g in ("day", "month", "year")},
    )
    return CompressedHistory(user_id=user_id, now=now_dt, text=text, summary=summary, stats=stats,
                             items=items_out)


def _fit_budget(entries: list[_Entry], kept_items: set[str], budget: int, count_tokens: CountTokens,
                full_block: str, full_tokens: int) -> tuple[list[bool], str, int, BudgetDrop]:
    """Drop the fewest entries (lowest confidence, then oldest, first) so the block fits ``budget``.

    Candidates are first located with a cheap estimate (tokens per character of the full block),
    then settled by binary search with the real counter; only a candidate whose real count fits is
    ever returned. Returns (mask, text, tokens, what was dropped); the text is empty if not even the
    ``omitted(...)`` line fits."""
    n = len(entries)
    order = sorted(range(n), key=lambda j: (entries[j].weight, entries[j].bucket, entries[j].last_ts,
                                            entries[j].label, entries[j].behavior, entries[j].query or ""))
    built: dict[int, tuple[list[bool], str, BudgetDrop]] = {}
    counted: dict[int, int] = {}

    def build(k: int) -> tuple[list[bool], str, BudgetDrop]:
        if k not in built:
            mask = [True] * n
            by_beh: Counter[str] = Counter()
            for j in order[:k]:
                mask[j] = False
                by_beh[entries[j].behavior] += entries[j].count
            shown = {entries[j].item_id for j in range(n) if mask[j]}
            d = BudgetDrop(entries=k, events=sum(by_beh.values()), items=len(kept_items - shown),
                           by_behavior=dict(sorted(by_beh.items())))
            built[k] = (mask, render(entries, mask, omitted=(d.events, d.items)), d)
        return built[k]

    def real(k: int) -> int:
        if k not in counted:
            counted[k] = count_tokens(build(k)[1])
        return counted[k]

    per_char = full_tokens / max(1, len(full_block))

    def first_estimated(limit: float) -> int:
        lo, hi = 1, n
        while lo < hi:
            mid = (lo + hi) // 2
            if len(build(mid)[1]) * per_char <= limit:
                hi = mid
            else:
                lo = mid + 1
        return lo

    lo, hi = first_estimated(budget * 1.05), first_estimated(budget * 0.95)
    step = max(1, hi - lo)
    while real(hi) > budget and hi < n:  # the estimate was optimistic: widen until a real fit
        lo, hi = hi + 1, min(n, hi + step)
        step *= 2
    if real(hi) > budget:  # not even the omitted(...) line fits
        mask, _, d = build(n)
        return mask, "", 0, d
    while lo < hi:
        mid = (lo + hi) // 2
        if real(mid) <= budget:
            hi = mid
        else:
            lo = mid + 1
    mask, text, d = build(hi)
    return mask, text, real(hi), d


def _summary(ts_l, beh_l, item_l, kept_idx, info, labels, today: date,
             cfg: CompressionConfig) -> HistorySummary:
    counts = Counter(beh_l)
    behavior_counts = dict(sorted(counts.items(), key=lambda kv: (-cfg.weight(kv[0]), kv[0])))
    cats = Counter(info[item_l[i]][1] for i in kept_idx if info[item_l[i]][1])
    top = [CategoryCount(category=c, count=k)
           for c, k in sorted(cats.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.top_categories]]
    recent: dict[str, list] = {}
    for i, (ts, beh) in enumerate(zip(ts_l, beh_l, strict=True)):
        if beh == "purchase" and 0 <= (today - ts.date()).days < cfg.recent_days:
            r = recent.setdefault(item_l[i], [ts, 0])
            r[0] = max(r[0], ts)
            r[1] += 1
    newest = sorted(recent.items(), key=lambda kv: (_newest_first(kv[1][0]), kv[0]))[: cfg.max_recent_purchases]
    recent_list = [
        RecentPurchase(item_id=iid, label=labels.get(iid) or core_label(info[iid][0], info[iid][5], cfg.max_core_words),
                       title=info[iid][0], last_date=last.date(), days_ago=(today - last.date()).days, count=cnt)
        for iid, (last, cnt) in newest
    ]
    first = min(ts_l).date() if ts_l else None
    last = max(ts_l).date() if ts_l else None
    return HistorySummary(
        behavior_counts=behavior_counts,
        top_categories=top,
        first_date=first,
        last_date=last,
        days_since_last=(today - last).days if last else None,
        recent_purchases=recent_list,
    )


# ----- dataset entry points --------------------------------------------------------------------------
def dataset_now(dataset: Dataset) -> datetime:
    """The dataset's clock: its latest behaviour (the default "now" for historical data)."""
    ts = dataset.behaviors["ts"].max()
    return ts if isinstance(ts, datetime) else datetime(1970, 1, 1)


def compress_user(
    dataset: Dataset,
    user_id: str,
    count_tokens: CountTokens,
    config: CompressionConfig | None = None,
    *,
    now: datetime | date | str | None = None,
    **overrides: Any,
) -> CompressedHistory:
    """Compress a dataset user's history as of ``now`` (``overrides`` as in :func:`compress_history`).

    With ``now`` given, only behaviours strictly before it are used (an evaluation cutoff); without
    it, ``now`` is the dataset's clock (:func:`dataset_now`) and the whole history is used. Unless
    ``config`` sets its own ``weights``, the dataset's (``LoadPolicies.weights``) are used. Raises
    UnknownUserError / EmptyHistoryError from :meth:`Dataset.history`."""
    cfg = _with(config, overrides)
    if "weights" not in cfg.model_fields_set:  # the dataset's weights, unless the config sets its own
        cfg = cfg.model_copy(update={"weights": dict(dataset.weights)})
    if now is None:
        when = dataset_now(dataset)
        hist = dataset.history_with_items(user_id)
    else:
        when = _as_datetime(now)
        hist = dataset.history_with_items(user_id, before=when)
    return compress_history(hist, count_tokens, cfg, now=when, user_id=user_id)
