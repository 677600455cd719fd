"""``app.py eval tags``: are IntentRec's tags the categories the user buys next, and does it find new ones?

One temporal split at T (``evals.protocol``; completejourney: T = 2017-10-01, a 28-day window, users
with >= 20 purchases before T and one in the window, a seeded sample of N of them). The graph runs for
every sampled user through a resumable batch (``batch.runner``) whose environment date is T and whose
towers and index are trained on data before T (``index_cutoff = T``), so nothing after T leaks in.

Definitions (fixed; docs/tag_eval.md explains the choices):

* **Category**: the dataset's ``items["category"]`` (completejourney: ``product_category``, 303 values).
  Purchase lines of items without a category (540 of 92k items) are ignored everywhere below.
* **Tag → category**: a tag that is exactly a catalogue product-type phrase (``tools.tag_stats``)
  maps to the category that phrase is most bought in before T (similarity 1); any other tag maps to
  the nearest category *name* by MiniLM text embedding (``TextEncoder``, cosine over the
  L2-normalised vectors; the category matrix is embedded once and cached on disk). Every tag's
  category and similarity are in the report. Baselines write category names as tags, which the
  embedding sends to themselves (cosine 1). The same mapping serves IntentRec and the tools-only list.
* **Predicted list**: a method's tags, cut to the first K (30), mapped to categories, repeats dropped.
* **Next-purchase target**: the category of the user's first purchase line at or after T inside the
  window (lines at the same timestamp in the dataset's row order). ``hr_basket@K`` counts a hit on any
  category of that first basket instead (every line at that first timestamp).
* **Discovery target**: the category of the user's first purchase line in the window whose category
  the user never bought before T. Users with none are left out of discovery figures and counted.
* **HR@K**: 1 if the target is in the predicted list, averaged over users with a target.
  **HR@n** (size-matched): each baseline cut to as many distinct categories as IntentRec's tags had
  for that user (``--match-n`` when there is no IntentRec run); IntentRec's own HR@n is its HR@K.
* **Baselines** (training rows before T only): ``recent``: the user's categories by last purchase
  (newest first; ties by count, then name); ``frequent``: by purchase lines (ties by last purchase,
  then name); ``popular``: every user's purchase lines before T, per category (ties by name), the same
  list for everyone. ``recent`` and ``frequent`` only hold categories the user bought before T, so
  their discovery HR is 0 by construction.
* **distinct_categories**: distinct mapped categories among a user's tags (IntentRec only; mean).
* **r_div** (RecGPT-V2's diversity reward): mean over pairs of ``1 - cos`` of the tags' text
  embeddings, per user with >= 2 tags, averaged over users; baselines on their size-matched list.
* **recent_repeat_share**: over all tags of all users, the share whose mapped category the user
  bought in the ``recent_days`` (14) days before T: the tag only repeats a recent purchase.
* **Judge pass rates**: over every verdict of the graph's own verdict set (every judge pass, so a
  regenerated output counts again), per kind (tag / explanation) and dimension, the share of
  verdicts whose dimension outcome is not ``defect``; plus the S/A/B grade shares.
* **Explanation diversity** over every emitted explanation: ``distinct_2`` = distinct word bigrams /
  all word bigrams (pooled); ``idf`` = mean over explanations of the mean IDF of its distinct words,
  ``IDF(w) = ln(N / df(w))`` over the N explanations, divided by ``ln N`` (0: every explanation uses
  the same words; 1: no word is shared).
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from agents.tag_rules import TOOL_REFILL_PERSONA
from core.errors import IntentRecError
from evals.run_stats import spread

DEFAULT_K = 30
RECENT_DAYS = 14
#: frequent + category-kNN mixes: how many of the K (as a number of 30) come from the frequent list;
#: the rest are category-kNN categories not yet bought. With frequent (30) and category-kNN (0) they
#: trace the log-fitting frontier
MIX_FREQUENT = (25, 20, 15, 10, 5)
MIXES = tuple(f"mix_{f}_{30 - f}" for f in MIX_FREQUENT)
BASELINES = ("recent", "frequent", "popular", "popular_new", "knn_new", *MIXES, "tools_only")
METHODS = ("intentrec", *BASELINES)
#: the baselines a loss note is written for (the mixes are summed up by the frontier verdict instead)
NOTE_BASELINES = ("recent", "frequent", "popular", "popular_new", "knn_new", "tools_only")
LABELS = {"intentrec": "IntentRec tags", "recent": "recent categories", "frequent": "frequent categories",
          "popular": "popular categories", "popular_new": "popular, not yet bought",
          "knn_new": "category-kNN, not yet bought", "tools_only": "candidate tools only (no LLM)",
          **{m: f"{f} frequent + {30 - f} kNN" for m, f in zip(MIXES, MIX_FREQUENT, strict=True)}}
#: the figures a method row carries (None where a figure does not apply to that method)
METRIC_KEYS = ("hr@k", "discovery_hr@k", "hr@n", "discovery_hr@n", "hr_basket@k", "category_recall@k",
               "new_category_recall@k", "n_tags", "distinct_categories", "r_div", "recent_repeat_share",
               "mapping_similarity")


class TagEvalError(IntentRecError):
    """The evaluation cannot run as asked (no date on the batch, no user left, conflicting options)."""


# ------------------------------------------------------------------------------------------------
# metrics (pure functions; tests/test_tag_eval.py checks each against a hand-computed example)

def distinct_in_order(xs: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(xs))


def hit(predicted: Sequence[str], target: str | set[str] | None, k: int) -> float | None:
    """1.0 if ``target`` (one category, or any of a set) is among the first ``k`` predicted categories;
    None when there is no target."""
    if target is None or (isinstance(target, set) and not target):
        return None
    top = set(predicted[:k])
    return float(bool(top & target)) if isinstance(target, set) else float(target in top)


def recall(predicted: Sequence[str], targets: set[str] | None, k: int) -> float | None:
    """Share of ``targets`` among the first ``k`` predicted categories; None without targets."""
    if not targets:
        return None
    return len(set(predicted[:k]) & targets) / len(targets)


def mean(xs: Iterable[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    return _WORD.findall((text or "").lower())


def distinct_n(texts: Sequence[str], n: int = 2) -> float | None:
    """Distinct n-grams / all n-grams, pooled over ``texts`` (None if there is no n-gram)."""
    grams: list[tuple[str, ...]] = []
    for t in texts:
        w = words(t)
        grams.extend(tuple(w[i:i + n]) for i in range(len(w) - n + 1))
    return len(set(grams)) / len(grams) if grams else None


def idf_score(texts: Sequence[str]) -> float | None:
    """Mean over texts of the mean IDF of each text's distinct words, normalised by ``ln N``."""
    docs = [set(words(t)) for t in texts]
    docs = [d for d in docs if d]
    n = len(docs)
    if n < 2:
        return None
    df = Counter(w for d in docs for w in d)
    per = [sum(math.log(n / df[w]) for w in d) / len(d) for d in docs]
    return sum(per) / n / math.log(n)


def mean_pairwise_distance(vectors: np.ndarray) -> float | None:
    """Mean ``1 - cos`` over unordered pairs of rows (rows need not be normalised); None below 2 rows."""
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] < 2:
        return None
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    v = v / np.where(norms > 0, norms, 1.0)
    sim = v @ v.T
    iu = np.triu_indices(v.shape[0], k=1)
    return float(np.mean(1.0 - sim[iu]))


def recent_repeat_share(per_user: Iterable[tuple[Sequence[str], set[str]]]) -> float | None:
    """Pooled over users: of all (mapped) tag categories, the share in that user's recent set."""
    n = rep = 0
    for cats, recent in per_user:
        n += len(cats)
        rep += sum(1 for c in cats if c in recent)
    return rep / n if n else None


def judge_rates(judgements: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per kind: verdict count, per-dimension pass share (outcome not ``defect``) and grade shares."""
    from judges.schemas import dimensions_for

    out: dict[str, Any] = {}
    for kind in ("tag", "explanation"):
        rows = [j for j in judgements if (j.get("kind") or (j.get("verdict") or {}).get("kind")) == kind]
        dims: dict[str, list[int]] = {d: [] for d in dimensions_for(kind)}
        fallback = 0
        for j in rows:
            for d in (j.get("verdict") or {}).get("dimensions") or []:
                dims.setdefault(d["dimension"], []).append(int(d.get("outcome") != "defect"))
                fallback += int(bool(d.get("fallback")))
        grades = Counter(j.get("grade") or (j.get("verdict") or {}).get("grade") for j in rows)
        out[kind] = {"n_verdicts": len(rows),
                     "pass": {d: (round(sum(v) / len(v), 4) if v else None) for d, v in dims.items()},
                     "grades": {g: (round(grades.get(g, 0) / len(rows), 4) if rows else None) for g in "SAB"},
                     "unjudged_dimensions": fallback}
    return out


# ------------------------------------------------------------------------------------------------
# category facts per user, from the dataset

@dataclass
class CategoryFacts:
    cutoff: datetime
    end: datetime
    recent_days: int
    popular: list[str]  # every category by purchase lines before T (all users)
    recent: dict[str, list[str]] = field(default_factory=dict)  # user -> categories, newest first
    frequent: dict[str, list[str]] = field(default_factory=dict)  # user -> categories, most bought first
    seen: dict[str, set[str]] = field(default_factory=dict)  # user -> every category bought before T
    recent_set: dict[str, set[str]] = field(default_factory=dict)  # user -> bought in the recent_days before T
    next_cat: dict[str, str] = field(default_factory=dict)  # user -> first purchase line's category after T
    basket: dict[str, set[str]] = field(default_factory=dict)  # user -> categories of the first basket after T
    discovery: dict[str, str] = field(default_factory=dict)  # user -> first never-bought category after T
    window: dict[str, set[str]] = field(default_factory=dict)  # user -> every category bought in [T, end)
    knn_new: dict[str, list[str]] = field(default_factory=dict)  # user -> category-kNN, never bought, best first
    tools: dict[str, list[str]] = field(default_factory=dict)  # user -> the candidate tools' ranking (phrases)
    k: int = DEFAULT_K
    tool_stats: Any = None  # the tools.tag_stats.TagStats at T behind knn_new and tools

    def baseline(self, name: str, user: str) -> list[str]:
        if name == "popular":
            return self.popular
        if name == "popular_new":
            seen = self.seen.get(user, set())
            return [c for c in self.popular if c not in seen]
        if name.startswith("mix_"):
            f = round(int(name.split("_")[1]) * self.k / 30)
            head = self.frequent.get(user, [])[:f]
            return head + [c for c in self.knn_new.get(user, []) if c not in head][:self.k - len(head)]
        if name == "tools_only":
            return self.tools.get(user, [])
        return getattr(self, name).get(user, [])

    def new_in_window(self, user: str) -> set[str]:
        return self.window.get(user, set()) - self.seen.get(user, set())


def category_facts(dataset: Any, users: Sequence[str], cutoff: datetime, end: datetime, *,
                   behaviors: Sequence[str] = ("purchase",), recent_days: int = RECENT_DAYS, k: int = DEFAULT_K,
                   tool_stats: Any = None) -> CategoryFacts:
    """Targets and baseline lists from rows before ``cutoff`` (lists) and in ``[cutoff, end)`` (targets).
    ``tool_stats``: a ``tools.tag_stats.TagStats`` at ``cutoff`` for the category-kNN and candidate-tool
    lists (built here when None)."""
    b = dataset.behaviors.with_row_index("row")
    present = set(b["behavior"].unique().to_list())
    keep = [x for x in behaviors if x in present] or sorted(present)
    cats = dataset.items.select("item_id", pl.col("category").fill_null(""))
    b = (b.filter(pl.col("behavior").is_in(keep)).select("row", "user_id", "item_id", "ts")
         .join(cats, on="item_id", how="inner").filter(pl.col("category") != ""))
    train = b.filter(pl.col("ts") < cutoff)
    pop = train.group_by("category").len().sort(["len", "category"], descending=[True, False])
    facts = CategoryFacts(cutoff=cutoff, end=end, recent_days=recent_days, popular=pop["category"].to_list())
    uset = [str(u) for u in users]
    tu = train.filter(pl.col("user_id").is_in(uset))
    per = tu.group_by("user_id", "category").agg(pl.len().alias("n"), pl.col("ts").max().alias("last"))
    for u, g in per.group_by("user_id"):
        uid = u[0]
        rows = list(g.select("category", "n", "last").iter_rows())
        facts.frequent[uid] = [c for c, _, _ in sorted(rows, key=lambda r: (-r[1], -r[2].timestamp(), r[0]))]
        facts.recent[uid] = [c for c, _, _ in sorted(rows, key=lambda r: (-r[2].timestamp(), -r[1], r[0]))]
        facts.seen[uid] = {c for c, _, _ in rows}
    since = cutoff - timedelta(days=recent_days)
    for uid, c in tu.filter(pl.col("ts") >= since).select("user_id", "category").unique().iter_rows():
        facts.recent_set.setdefault(uid, set()).add(c)
    win = (b.filter((pl.col("ts") >= cutoff) & (pl.col("ts") < end) & pl.col("user_id").is_in(uset))
           .sort(["user_id", "ts", "row"]))
    first_ts: dict[str, datetime] = {}
    for uid, c, ts in win.select("user_id", "category", "ts").iter_rows():
        if uid not in facts.next_cat:
            facts.next_cat[uid] = c
            first_ts[uid] = ts
        if ts == first_ts[uid]:
            facts.basket.setdefault(uid, set()).add(c)
        if uid not in facts.discovery and c not in facts.seen.get(uid, set()):
            facts.discovery[uid] = c
        facts.window.setdefault(uid, set()).add(c)
    facts.k = k
    _tool_lists(facts, dataset, uset, tool_stats, behaviors=keep)
    return facts


def _tool_lists(facts: CategoryFacts, dataset: Any, users: Sequence[str], stats: Any, *,
                behaviors: Sequence[str]) -> None:
    """Category-kNN (never bought) and the candidate tools' own ranking, per user, from the tools'
    statistics at T (one source for both: the baselines and the graph's tools are the same code)."""
    from tools.candidates import candidate_pool, tools_only_ranking
    from tools.tag_stats import TagStats, collaborative_new

    stats = stats or TagStats.build(dataset, facts.cutoff, behaviors=tuple(behaviors))
    facts.tool_stats = stats
    for u in users:
        if u not in facts.seen:
            continue
        facts.knn_new[u] = [c.category for c in collaborative_new(stats, u, facts.k)]  # one per category
        facts.tools[u] = [c.phrase for c in tools_only_ranking(candidate_pool(stats, u), n=facts.k)]


# ------------------------------------------------------------------------------------------------
# tag -> category

@functools.lru_cache(1)
def default_encoder() -> Any:
    """One MiniLM encoder per process (loading it takes seconds)."""
    from retrieval.text_encoder import TextEncoder

    return TextEncoder()


class CategoryMapper:
    """A catalogue phrase's own category (``exact``), else the nearest category name by MiniLM cosine.
    The category matrix is embedded once (disk-cached)."""

    def __init__(self, categories: Sequence[str], encoder: Any = None, exact: dict[str, str] | None = None):
        self.categories = sorted({c for c in categories if c})
        self.encoder = encoder or default_encoder()
        self.matrix = self.encoder.encode_cached(self.categories)
        self._memo: dict[str, tuple[str, float]] = {p: (c, 1.0) for p, c in (exact or {}).items()
                                                     if c in set(self.categories)}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.encoder.encode(list(texts))

    def map(self, tags: Sequence[str]) -> list[tuple[str, float]]:
        """Each tag's nearest category and its cosine (memoised per distinct text)."""
        todo = list(dict.fromkeys(t for t in tags if t not in self._memo))
        if todo:
            sims = self.embed(todo) @ self.matrix.T
            for i, j in enumerate(sims.argmax(axis=1)):
                self._memo[todo[i]] = (self.categories[j], round(float(sims[i, j]), 4))
        return [self._memo[t] for t in tags]


def catalogue_categories(dataset: Any) -> dict[str, set[str]]:
    """Catalogue phrase -> the categories it comes from: the product-type phrases the ``catalogue`` tag
    mode lets the expert choose (``graphs.prepare.types_by_category``) and the category names (lower
    case). Used only to audit the embedding mapping."""
    from graphs.prepare import types_by_category

    out: dict[str, set[str]] = {}
    for cat, phrases in types_by_category(dataset).items():
        for ph in phrases:
            out.setdefault(ph, set()).add(cat)
    for cat in dataset.items["category"].drop_nulls().unique().to_list():
        if cat:
            out.setdefault(cat.lower(), set()).add(cat)
    return out


def mapping_audit(per_user: dict[str, dict[str, Any]], lookup: dict[str, set[str]],
                  seen: dict[str, set[str]]) -> dict[str, Any]:
    """For IntentRec tags that are catalogue phrases: how often the embedding mapping lands in a
    category the phrase comes from (``agree``), and how often the phrase comes from a category the
    user had already bought (``from_user_categories``; the catalogue tag mode draws its phrases from
    the user's top categories, which caps discovery). Writes ``catalogue_categories`` into each tag."""
    n = known = agree = own = 0
    for u, rec in per_user.items():
        for t in (rec.get("intentrec") or {}).get("tags", []):
            n += 1
            cats = lookup.get(" ".join(t["tag"].strip().lower().split()))
            t["catalogue_categories"] = sorted(cats) if cats else None
            if cats:
                known += 1
                agree += int(t["category"] in cats)
                own += int(bool(cats & seen.get(u, set())))
    return {"n_tags": n, "n_catalogue_phrases": known, "agree": _r(agree / known) if known else None,
            "from_user_categories": _r(own / known) if known else None}


# ------------------------------------------------------------------------------------------------
# scoring

def _add_user(r: dict[str, list], mapper: CategoryMapper, *, targets: tuple[Any, ...], k: int,
              cats: list[str], small: list[str], div_texts: list[str], rep_cats: list[str], recent: set[str],
              n_tags: int, sims: list[float]) -> None:
    """Append one user's figures for one method: hits at k on all its categories, hits on the
    size-matched ``small`` list, recall of the window's categories, and the diversity / repeat /
    mapping inputs."""
    nxt, disc, basket, window, new = targets
    r["recall"].append(recall(cats, window, k))
    r["new_recall"].append(recall(cats, new, k))
    r["hr"].append(hit(cats, nxt, k))
    r["disc"].append(hit(cats, disc, k))
    r["hr_n"].append(hit(small, nxt, k))
    r["disc_n"].append(hit(small, disc, k))
    r["basket"].append(hit(cats, basket, k))
    r["n_tags"].append(n_tags)
    r["rdiv"].append(mean_pairwise_distance(mapper.embed(div_texts)) if len(div_texts) >= 2 else None)
    r["rep"].append((rep_cats, recent))
    r["sim"].extend(sims)


def score_methods(users: Sequence[str], facts: CategoryFacts, mapper: CategoryMapper, *,
                  intentrec: dict[str, list[str]] | None, k: int = DEFAULT_K, match_n: int = 6
                  ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Every method's figures on ``users`` and a per-user record. ``intentrec``: user -> tags, or None
    (baselines only; the size-matched n is then ``match_n`` for everyone)."""
    methods = (("intentrec",) if intentrec is not None else ()) + BASELINES
    per_user: dict[str, dict[str, Any]] = {}
    rows: dict[str, dict[str, list]] = {m: {key: [] for key in ("hr", "disc", "hr_n", "disc_n", "basket", "n_tags",
                                                                  "distinct", "rdiv", "rep", "sim", "recall",
                                                                  "new_recall")} for m in methods}
    for u in users:
        nxt, disc, basket = facts.next_cat.get(u), facts.discovery.get(u), facts.basket.get(u)
        targets = (nxt, disc, basket, facts.window.get(u), facts.new_in_window(u))
        rec: dict[str, Any] = {"next": nxt, "discovery": disc, "basket": sorted(basket or [])}
        n_match = match_n
        if intentrec is not None:
            tags = list(intentrec.get(u, []))[:k]
            mapped = mapper.map(tags)
            cats = distinct_in_order(c for c, _ in mapped)
            n_match = len(cats)
            rec["intentrec"] = {"tags": [{"tag": t, "category": c, "similarity": s}
                                         for t, (c, s) in zip(tags, mapped, strict=True)],
                                "hit": hit(cats, nxt, k), "discovery_hit": hit(cats, disc, k)}
            rows["intentrec"]["distinct"].append(len(cats))
            _add_user(rows["intentrec"], mapper, targets=targets, k=k, cats=cats, small=cats,
                      div_texts=tags, rep_cats=[c for c, _ in mapped], recent=facts.recent_set.get(u, set()),
                      n_tags=len(tags), sims=[s for _, s in mapped])
        rec["n"] = n_match
        for m in BASELINES:
            tags = facts.baseline(m, u)[:k]
            mapped = mapper.map(tags)
            cats = distinct_in_order(c for c, _ in mapped)
            small = cats[:n_match]
            _add_user(rows[m], mapper, targets=targets, k=k, cats=cats, small=small, div_texts=small,
                      rep_cats=small, recent=facts.recent_set.get(u, set()), n_tags=len(tags),
                      sims=[s for _, s in mapped])
            rec[m] = {"hit": hit(cats, nxt, k), "discovery_hit": hit(cats, disc, k),
                      "hit@n": hit(small, nxt, k), "discovery_hit@n": hit(small, disc, k)}
        per_user[u] = rec
    table: dict[str, dict[str, Any]] = {}
    for m in methods:
        r = rows[m]
        table[m] = {
            "hr@k": _r(mean(r["hr"])), "discovery_hr@k": _r(mean(r["disc"])),
            "hr@n": _r(mean(r["hr_n"])), "discovery_hr@n": _r(mean(r["disc_n"])),
            "hr_basket@k": _r(mean(r["basket"])), "category_recall@k": _r(mean(r["recall"])),
            "new_category_recall@k": _r(mean(r["new_recall"])), "n_tags": _r(mean(r["n_tags"])),
            "distinct_categories": _r(mean(r["distinct"])) if m == "intentrec" else None,
            "r_div": _r(mean(r["rdiv"])), "recent_repeat_share": _r(recent_repeat_share(r["rep"])),
            "mapping_similarity": _r(mean(r["sim"])),
            "n_users": len(r["hr"]), "n_with_target": sum(x is not None for x in r["hr"]),
            "n_with_discovery_target": sum(x is not None for x in r["disc"]),
            "hits": int(sum(x for x in r["hr"] if x)), "discovery_hits": int(sum(x for x in r["disc"] if x)),
        }
    return table, per_user


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(x, nd)


def loss_notes(table: dict[str, dict[str, Any]], per_user: dict[str, dict[str, Any]]) -> list[str]:
    """One line per figure on which IntentRec is below a baseline, with the numbers and the paired
    counts (users hit only by IntentRec / only by the baseline)."""
    if "intentrec" not in table:
        return []
    notes = []
    figures = (("hr@k", "hit", "hit", "HR@K"), ("discovery_hr@k", "discovery_hit", "discovery_hit", "discovery HR@K"),
               ("hr@n", "hit", "hit@n", "HR@n (size-matched)"),
               ("discovery_hr@n", "discovery_hit", "discovery_hit@n", "discovery HR@n (size-matched)"))
    ir = table["intentrec"]
    for b in NOTE_BASELINES:
        for key, ikey, bkey, label in figures:
            a, c = ir[key], table[b][key]
            if a is None or c is None or a >= c:
                continue
            only_i, only_b = paired(per_user, "intentrec", b, ikey, bkey).values()
            n = ir["n_with_discovery_target"] if "discovery" in key else ir["n_with_target"]
            notes.append(f"IntentRec loses to {b} on {label}: {a:.3f} vs {c:.3f} ({n} users; {only_i} hit only by "
                         f"IntentRec, {only_b} only by {b})")
    return notes


FRONTIER = ("knn_new", *reversed(MIXES), "frequent")


def frontier_at(table: dict[str, dict[str, Any]], hr: float) -> tuple[float | None, str]:
    """The log-fitting frontier's discovery HR@K at ``hr``: linear between the two neighbouring
    frequent+kNN lists (sorted by HR@K); outside their range, the end point's value. Returns the value
    and how it was read."""
    pts = sorted((table[m]["hr@k"], table[m]["discovery_hr@k"], m) for m in FRONTIER
                 if m in table and table[m]["hr@k"] is not None and table[m]["discovery_hr@k"] is not None)
    if not pts:
        return None, "no frontier"
    if hr <= pts[0][0]:
        return pts[0][1], f"below the frontier's range: {pts[0][2]}'s value"
    if hr >= pts[-1][0]:
        return pts[-1][1], f"above the frontier's range: {pts[-1][2]}'s value"
    for (h0, d0, m0), (h1, d1, m1) in zip(pts, pts[1:], strict=False):
        if h0 <= hr <= h1:
            w = 0.0 if h1 == h0 else (hr - h0) / (h1 - h0)
            return d0 + w * (d1 - d0), f"between {m0} and {m1}"
    return None, "no frontier"  # unreachable


def paired(per_user: dict[str, dict[str, Any]], a: str, b: str, key: str,
           b_key: str | None = None) -> dict[str, int]:
    """Users hit only by ``a`` (on ``key``) and only by ``b`` (on ``b_key``, default ``key``): ``hit``,
    ``discovery_hit``, or a baseline's size-matched ``hit@n``."""
    b_key = b_key or key

    def got(p: dict[str, Any], m: str, k: str) -> Any:
        return (p.get(m) or {}).get(k)

    only_a = sum(1 for p in per_user.values() if got(p, a, key) == 1.0 and got(p, b, b_key) == 0.0)
    only_b = sum(1 for p in per_user.values() if got(p, a, key) == 0.0 and got(p, b, b_key) == 1.0)
    return {f"only_{a}": only_a, f"only_{b}": only_b}


def verdicts(table: dict[str, dict[str, Any]], per_user: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's two checks: IntentRec above the frontier at its own HR@K, and the LLM path at least
    as good as the candidate tools alone on HR@K and discovery HR@K (with paired counts)."""
    out: dict[str, Any] = {"frontier": [{"method": m, "hr@k": table[m]["hr@k"],
                                         "discovery_hr@k": table[m]["discovery_hr@k"]}
                                        for m in FRONTIER if m in table]}
    ir = table.get("intentrec")
    if not ir or ir["hr@k"] is None or ir["discovery_hr@k"] is None:
        return out
    at, how = frontier_at(table, ir["hr@k"])
    out["above_frontier"] = {"intentrec_hr@k": ir["hr@k"], "intentrec_discovery_hr@k": ir["discovery_hr@k"],
                             "frontier_discovery_hr@k": _r(at), "read": how,
                             "pass": at is not None and ir["discovery_hr@k"] > at}
    if "tools_only" in table:
        t = table["tools_only"]
        out["llm_vs_tools_only"] = {
            "hr@k": [ir["hr@k"], t["hr@k"]], "discovery_hr@k": [ir["discovery_hr@k"], t["discovery_hr@k"]],
            "paired_hit": paired(per_user, "intentrec", "tools_only", "hit"),
            "paired_discovery_hit": paired(per_user, "intentrec", "tools_only", "discovery_hit"),
            "pass": bool(t["hr@k"] is not None and t["discovery_hr@k"] is not None
                         and ir["hr@k"] >= t["hr@k"] and ir["discovery_hr@k"] >= t["discovery_hr@k"])}
    return out


# ------------------------------------------------------------------------------------------------
# IntentRec's side: the batch in the run log

def intentrec_outputs(store: Any, batch_id: str) -> dict[str, Any]:
    """Per finished user of a batch: tags, run id and status, tags dropped by the judge, explanations and
    the graph's judgements; plus the failed and unfinished users and the models and settings used."""
    from runlog.batches import BatchStore

    out: dict[str, Any] = {"users": {}, "failed": {}, "missing": [], "models": [], "settings": None}
    for it in BatchStore(store).items(batch_id):
        u = it["user_id"]
        if it["status"] == "failed":
            out["failed"][u] = it["error"]
            continue
        if it["status"] != "done" or not it["run_id"]:
            out["missing"].append(u)
            continue
        run = store.get_run(it["run_id"])
        o = run.get("output") or {}
        ctx = run.get("context") or {}
        if ctx.get("models") and ctx["models"] not in out["models"]:
            out["models"].append(ctx["models"])
        out["settings"] = out["settings"] or ctx.get("settings")
        vs = store.graph_set(it["run_id"])
        out["users"][u] = {
            "run_id": it["run_id"], "status": run["status"],
            "tags": [t["tag"] for t in o.get("tags") or [] if t.get("tag")],
            "sources": [t.get("source") or "free" for t in o.get("tags") or [] if t.get("tag")],
            # False for a tag the arbiter took from the candidate tools' ranking: no expert (no model) wrote it
            "by_expert": [t.get("persona") != TOOL_REFILL_PERSONA for t in o.get("tags") or [] if t.get("tag")],
            "shortfall": sum(d.get("count", 0) for d in o.get("drops") or [] if d.get("reason") == "shortfall"),
            "filled_from_tools": sum(d.get("count", 0) for d in o.get("drops") or []
                                     if d.get("reason") == "filled_from_tools"),
            "wall_s": run.get("wall_s"),
            "dropped_tags": sum(1 for d in o.get("drops") or [] if d.get("stage") == "judge_tags"),
            "explanations": [r["explanation"] for r in store.recommendations(it["run_id"]) if r.get("explanation")],
            "judgements": store.judgements(vs["set_id"]) if vs else [],
        }
    return out


def expert_tag_figures(recs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The final tags an expert wrote (not the arbiter's refill from the candidate tools), per user: how
    many, and the hit rates of those tags alone. This is the part of the list a model change can move;
    the refill is the same for any model."""
    hits = [r["expert_hit"] for r in recs if r.get("expert_hit") is not None]
    disc = [r["expert_discovery_hit"] for r in recs if r.get("expert_discovery_hit") is not None]
    return {"per_user": _r(mean([sum(1 for t in r["tags"] if t.get("by_expert")) for r in recs])),
            "hr@k": _r(mean(hits)), "hits": int(sum(hits)),
            "discovery_hr@k": _r(mean(disc)), "discovery_hits": int(sum(disc)),
            "definition": "hit of the distinct categories of the final tags whose persona is an expert's"}


def intentrec_summary(ir: dict[str, Any], users: Sequence[str]) -> dict[str, Any]:
    """IntentRec-only figures over ``users``: run status, judge pass rates, explanation diversity."""
    per = [ir["users"][u] for u in users]
    expl = [e for p in per for e in p["explanations"]]
    return {
        "run_ids": {u: ir["users"][u]["run_id"] for u in users},
        "run_status": dict(Counter(p["status"] for p in per)),
        "users_without_tags": [u for u in users if not ir["users"][u]["tags"]],
        "tag_sources": dict(Counter(x for p in per for x in p["sources"]).most_common()),
        "tag_shortfall": {"users": sum(1 for p in per if p["shortfall"]), "tags": sum(p["shortfall"] for p in per)},
        "tags_filled_from_tools": sum(p["filled_from_tools"] for p in per),
        "wall_s_per_user": spread([p["wall_s"] for p in per], 2),
        "tags_dropped_by_judge": sum(p["dropped_tags"] for p in per),
        "judge": judge_rates([j for p in per for j in p["judgements"]]),
        "explanations": {"n": len(expl), "distinct_2": _r(distinct_n(expl, 2)), "idf": _r(idf_score(expl))},
    }


def _same_spec(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same run settings: every ``BatchSpec`` field but the sample's record (``seed``, ``selection``),
    so a setting added to the spec counts here without a second list to keep in step."""
    from batch.runner import BatchSpec

    keys = set(BatchSpec.model_fields) - {"seed", "selection"}
    return all((a.get(x) or None) == (b.get(x) or None) for x in keys)


def find_batch(store: Any, users: Sequence[str], spec: dict[str, Any]) -> str | None:
    """The newest batch in the run log over exactly ``users`` with the same run settings (so a rerun,
    or a batch started with ``app.py batch --user-file``, is reused instead of run again)."""
    from runlog.batches import BatchStore
    from runlog.store import loads

    bs = BatchStore(store)
    want = sorted(users)
    for row in store._query("SELECT batch_id, spec_json FROM batches ORDER BY created_at DESC, rowid DESC"):
        if not _same_spec(loads(row["spec_json"]) or {}, spec):
            continue
        if sorted(i["user_id"] for i in bs.items(row["batch_id"])) == want:
            return row["batch_id"]
    return None


# ------------------------------------------------------------------------------------------------
# the whole evaluation

def eligible_users(dataset: Any, cutoff: datetime, end: datetime, *, min_events: int,
                   behaviors: Sequence[str]) -> list[str]:
    """The protocol's users (``evals.protocol.make_split``'s rule): at least ``min_events`` target rows
    before T and one in ``[T, end)``. Sorted."""
    b = dataset.behaviors.filter(pl.col("behavior").is_in(list(behaviors)))
    counts = b.filter(pl.col("ts") < cutoff).group_by("user_id").len()
    train = set(counts.filter(pl.col("len") >= min_events)["user_id"].to_list())
    test = set(b.filter((pl.col("ts") >= cutoff) & (pl.col("ts") < end))["user_id"].unique().to_list())
    return sorted(train & test)


def _store(runlog: Any) -> Any:
    from runlog.store import open_runlog

    return runlog if hasattr(runlog, "start_run") else open_runlog(runlog)


def _progress(say: Callable[[str], None]) -> Callable[[dict[str, int]], None]:
    last: list[tuple[int, int]] = []

    def show(c: dict[str, int]) -> None:
        now = (c["done"], c["failed"])
        if not last or last[-1] != now:
            last.append(now)
            say(f"  {c['done'] + c['failed']}/{c['total']} users ({c['failed']} failed)")
    return show


def run_tag_eval(dataset: str | None = None, *, users: int | None = 30, cutoff: datetime | None = None,
                 window_days: int = 28, min_events: int = 20, seed: int = 42, k: int = DEFAULT_K,
                 recent_days: int = RECENT_DAYS, match_n: int = 6, baselines_only: bool = False,
                 batch_id: str | None = None, runlog: Any = None, resume: bool = True, concurrency: int = 1,
                 workers: int = 1, full_graph: bool = False, backend: str | None = None, model: str | None = None, base_url: str | None = None,
                 prompts: str | None = None, factory: str | None = None, overrides: dict[str, Any] | None = None,
                 encoder: Any = None, on_progress: Callable[[dict[str, int]], None] | None = None,
                 say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or resume, or only read) the batch, then score IntentRec and the baselines on its users.
    ``users=None``: every eligible user (baselines only). ``batch_id``: evaluate that batch (its users,
    date and settings), resuming it first unless ``resume=False``."""
    from batch.runner import BatchSpec, pin_spec
    from behavior.adapters import DEFAULT_DATASET, load_dataset_cached
    from evals.protocol import Protocol, make_split
    from runlog.batches import BatchStore

    say = say or (lambda _m: None)
    store = info = None
    if batch_id is not None:
        if baselines_only:
            raise TagEvalError("--baselines-only runs no graph: drop --batch")
        from core.options import parse_date

        store = _store(runlog)
        info = BatchStore(store).get(batch_id)
        batch_id = info["batch_id"]
        spec = BatchSpec.model_validate(info["spec"])
        if not spec.now:
            raise TagEvalError(f"batch {batch_id} was run without --now: a temporal evaluation needs the date T")
        t_batch = parse_date(spec.now, "batch --now")
        if cutoff is not None and cutoff != t_batch:
            raise TagEvalError(f"--cutoff {cutoff:%Y-%m-%d} differs from the batch's date {t_batch:%Y-%m-%d}")
        cutoff = t_batch
        dataset = spec.dataset
    ds = load_dataset_cached(dataset or DEFAULT_DATASET)
    base = Protocol(cutoff=cutoff, window_days=window_days, min_train_events=min_events, seed=seed)
    # a small seeded split resolves T, the window and the target behaviours exactly as the protocol does
    probe = make_split(ds, replace(base, max_users=users or 1))
    cutoff, end, targets = probe.cutoff, probe.end, probe.stats["target_behaviors"]
    eligible = eligible_users(ds, cutoff, end, min_events=min_events, behaviors=targets)
    if batch_id is not None:
        sample = [i["user_id"] for i in BatchStore(store).items(batch_id)]
    else:
        sample = list(eligible) if users is None else list(probe.users)

    if not baselines_only and batch_id is None:
        store = _store(runlog)
        # only the tags are scored: the graph stops after the tag judge unless the full graph is asked for
        spec = BatchSpec(dataset=dataset, now=cutoff.date().isoformat(), index_cutoff=cutoff.date().isoformat(),
                         overrides={**({} if full_graph else {"tags_only": True}), **(overrides or {})}, backend=backend, model=model, base_url=base_url,
                         prompts=prompts, factory=factory, seed=seed,
                         selection={"eligible_users": len(eligible), "sampled": len(sample)})
        spec = pin_spec(spec)
        batch_id = find_batch(store, sample, spec.model_dump())
        if batch_id:
            say(f"reusing batch {batch_id} (same users and settings) in {store.path}")
        else:
            batch_id = BatchStore(store).create(sample, spec=spec.model_dump(), dataset=dataset or ds.name)
            say(f"created batch {batch_id}: {len(sample)} users at {cutoff:%Y-%m-%d} in {store.path}")

    summary = None
    if not baselines_only:
        counts = BatchStore(store).counts(batch_id)
        if resume and (counts["pending"] or counts["running"]):
            from batch.runner import execute

            say(f"running batch {batch_id}: {counts['pending']} pending of {counts['total']} (resumable: "
                "rerun with --batch ID)")
            summary = execute(store, batch_id, concurrency=concurrency, workers=workers,
                              on_progress=on_progress or _progress(say))
        info = BatchStore(store).get(batch_id)

    ir = None if baselines_only else intentrec_outputs(store, batch_id)
    excluded: dict[str, list[str]] = {}
    if ir is not None:
        excluded["failed"] = sorted(ir["failed"])
        excluded["not_finished"] = sorted(ir["missing"])
    eset = set(eligible)
    candidates = [u for u in sample if ir is None or u in ir["users"]]
    excluded["not_eligible"] = sorted(u for u in candidates if u not in eset)
    candidates = [u for u in candidates if u in eset]
    facts = category_facts(ds, candidates, cutoff, end, behaviors=targets, recent_days=recent_days, k=k)
    excluded["no_categorised_purchase_in_window"] = sorted(u for u in candidates if u not in facts.next_cat)
    evaluated = sorted(u for u in candidates if u in facts.next_cat)
    if not evaluated:
        raise TagEvalError("no user left to evaluate" + (f" in batch {batch_id} (counts {info['counts']}); run it "
                                                         "without --no-resume" if batch_id else ""))
    stats = facts.tool_stats
    mapper = CategoryMapper(ds.items["category"].drop_nulls().unique().to_list(), encoder or default_encoder(),
                            exact=dict(zip(stats.types, stats.type_category, strict=True)))
    tags = None if ir is None else {u: ir["users"][u]["tags"] for u in evaluated}
    table, per_user = score_methods(evaluated, facts, mapper, intentrec=tags, k=k, match_n=match_n)
    if ir is not None:
        for u in evaluated:  # each tag's candidate tool (or "free") and whether its category was bought in the window
            rec = per_user[u]["intentrec"]
            for t, src, by_expert in zip(rec["tags"], ir["users"][u]["sources"], ir["users"][u]["by_expert"],
                                         strict=False):
                t["source"] = src
                t["by_expert"] = by_expert
                t["bought_in_window"] = t["category"] in facts.window.get(u, set())
            own = distinct_in_order(t["category"] for t in rec["tags"] if t["by_expert"])
            rec["expert_hit"] = hit(own, facts.next_cat.get(u), k)
            rec["expert_discovery_hit"] = hit(own, facts.discovery.get(u), k)
    report: dict[str, Any] = {
        "command": "eval tags",
        "dataset": dataset or ds.name,
        "protocol": {"cutoff": cutoff.isoformat(), "end": end.isoformat(), "window_days": window_days,
                     "n_users": len(evaluated), "match_n": match_n if ir is None else None,
                     "min_train_events": min_events, "seed": seed, "k": k, "recent_days": recent_days,
                     "target_behaviors": targets, "eligible_users": len(eligible),
                     "sample": "numpy default_rng(seed).choice over the sorted eligible users (evals.protocol)"},
        "definitions": {
            "category": "items['category'] (completejourney: product_category); lines without one are ignored",
            "mapping": "tag -> nearest category name by all-MiniLM-L6-v2 cosine (TextEncoder)",
            "next_target": "category of the first purchase line at or after T in the window (dataset row order "
                           "within a timestamp)",
            "basket_target": "any category of the first basket (every line at the first timestamp) after T",
            "discovery_target": "category of the first purchase line in the window whose category the user never "
                                "bought before T",
            "hr@n": "each baseline cut to as many distinct categories as IntentRec's tags had for the user"
                    + (f" (baselines only: n = {match_n})" if ir is None else ""),
            "recent_repeat_share": f"share of tags whose category the user bought in the {recent_days} days before T",
            "r_div": "mean pairwise (1 - cosine) of the tags' MiniLM embeddings per user, averaged",
            "judge": "share of graph verdicts (every pass) whose dimension is not 'defect'; grade shares",
            "explanations": "distinct_2 = distinct / all word bigrams (pooled); idf = mean over explanations of "
                            "the mean ln(N/df) of its distinct words, / ln N",
        },
        "n_categories": len(mapper.categories),
        "baselines_only": ir is None,
        "users": {"sample": list(sample), "n_sample": len(sample), "evaluated": evaluated,
                  "n_evaluated": len(evaluated),
                  "n_with_discovery_target": sum(1 for u in evaluated if u in facts.discovery),
                  "no_discovery_target": sorted(u for u in evaluated if u not in facts.discovery),
                  "excluded": excluded,
                  "excluded_counts": {r: len(v) for r, v in excluded.items()}},
        "popular": facts.popular[:k],
        "metrics": table,
        "checks": verdicts(table, per_user),
        "notes": [],
    }
    if ir is not None:
        models = ir["models"]
        report["batch"] = {"batch_id": batch_id, "runlog": str(store.path), "spec": info["spec"],
                           "counts": info["counts"], "ran_now": summary and summary["this_run"],
                           "sample_matches_seed": sorted(sample) == make_split(
                               ds, replace(base, cutoff=cutoff, max_users=len(sample))).users}
        report["model"] = models[0] if len(models) == 1 else models
        report["context_settings"] = ir["settings"]
        report["intentrec"] = {"mapping_audit": mapping_audit(per_user, catalogue_categories(ds), facts.seen),
                               **intentrec_summary(ir, evaluated),
                               "expert_tags": expert_tag_figures([per_user[u]["intentrec"] for u in evaluated])}
        if not (info["spec"].get("index_cutoff") and info["spec"]["index_cutoff"] <= cutoff.date().isoformat()):
            report["notes"].append(f"the batch's index cutoff is {info['spec'].get('index_cutoff')!r}, not T: the "
                                   "retriever may have seen purchases after T")
        report["notes"].extend(loss_notes(table, per_user))
        if excluded["failed"] or excluded["not_finished"]:
            report["notes"].append(f"{len(excluded['failed'])} failed and {len(excluded['not_finished'])} unfinished "
                                   f"user(s) of batch {batch_id} are left out of every method")
    report["notes"].append(f"{len(evaluated)} users: one user moves a hit rate by {1 / len(evaluated):.3f}")
    report["per_user"] = per_user if ir is not None or len(evaluated) <= 200 else None
    return report


# ------------------------------------------------------------------------------------------------
# human output

def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def render(report: dict[str, Any], console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=max(Console().width, 200))
    p, u = report["protocol"], report["users"]
    k = p["k"]
    head = (f"[bold]Tag evaluation[/] on {report['dataset']}: T {p['cutoff'][:10]}, {p['window_days']}-day window, "
            f"{u['n_evaluated']} of {u['n_sample']} sampled users (seed {p['seed']}), {report['n_categories']} categories")
    if "batch" in report:
        head += f"; batch {report['batch']['batch_id']}, model {report.get('model')}"
    console.print(head)
    n_is = (f"n = {p['match_n']}" if report["baselines_only"] else "n = IntentRec's distinct categories per user")
    t = Table(title=f"methods × metrics (K = {k}; {n_is})")
    t.add_column("method", no_wrap=True)
    cols = [("hr@k", f"HR@{k}"), ("discovery_hr@k", f"disc HR@{k}"), ("hr@n", "HR@n"), ("discovery_hr@n", "disc HR@n"),
            ("category_recall@k", f"cat R@{k}"), ("new_category_recall@k", f"new-cat R@{k}"),
            ("hr_basket@k", f"basket HR@{k}"), ("n_tags", "tags/user"), ("distinct_categories", "distinct cats"),
            ("r_div", "R_div"), ("recent_repeat_share", "recent repeat"), ("mapping_similarity", "map cos")]
    for _, h in cols:
        t.add_column(h, justify="right")
    for m, row in report["metrics"].items():
        t.add_row(LABELS.get(m, m), *[_fmt(row[c]) for c, _ in cols])
    console.print(t)
    ir = report.get("intentrec")
    if ir:
        j = Table(title="judge pass rates (share of verdicts not 'defect')")
        j.add_column("kind")
        j.add_column("verdicts", justify="right")
        j.add_column("dimensions")
        j.add_column("grades S/A/B")
        for kind, r in ir["judge"].items():
            j.add_row(kind, str(r["n_verdicts"]), ", ".join(f"{d} {_fmt(v)}" for d, v in r["pass"].items()),
                      "/".join(_fmt(r["grades"][g]) for g in "SAB"))
        console.print(j)
        e = ir["explanations"]
        console.print(f"explanations: {e['n']}, distinct-2 {_fmt(e['distinct_2'])}, IDF score {_fmt(e['idf'])}; "
                      f"run status {ir['run_status']}; users without tags {len(ir['users_without_tags'])}; "
                      f"tags dropped by the judge {ir['tags_dropped_by_judge']}")
        x = ir.get("expert_tags") or {}
        console.print(f"expert-written final tags: {_fmt(x.get('per_user'))} per user (the rest: the candidate tools' "
                      f"refill); HR@{k} of those alone {_fmt(x.get('hr@k'))}, discovery {_fmt(x.get('discovery_hr@k'))}")
    ch = report.get("checks") or {}
    if "above_frontier" in ch:
        a = ch["above_frontier"]
        console.print(f"frontier: IntentRec HR@{k} {_fmt(a['intentrec_hr@k'])}, discovery {_fmt(a['intentrec_discovery_hr@k'])}"
                      f" vs the frequent+kNN frontier's {_fmt(a['frontier_discovery_hr@k'])} at that HR ({a['read']}): "
                      + ("[green]above[/]" if a["pass"] else "[red]not above[/]"))
    if "llm_vs_tools_only" in ch:
        t = ch["llm_vs_tools_only"]
        console.print(f"LLM vs candidate tools only: HR@{k} {_fmt(t['hr@k'][0])} vs {_fmt(t['hr@k'][1])} "
                      f"{t['paired_hit']}, discovery {_fmt(t['discovery_hr@k'][0])} vs {_fmt(t['discovery_hr@k'][1])} "
                      f"{t['paired_discovery_hit']}: " + ("[green]at least as good[/]" if t["pass"] else "[red]worse[/]"))
    console.print(f"discovery targets: {u['n_with_discovery_target']} users; excluded: {u['excluded_counts']}")
    for n in report["notes"]:
        console.print(f"  • {n}")
