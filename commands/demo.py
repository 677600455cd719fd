"""``app.py demo``: the main job. Builds whatever is missing, runs the graph for a few real users and
shows what IntentRec does, in the terminal and as a self-contained HTML report.

What it does, in order:

1. loads the dataset (completejourney by default; cached as Parquet under the data dir);
2. loads the retriever for the demo date, **training the towers and building the FAISS index if they
   are not cached yet** (progress bars; cached under ``<data dir>/retrieval``);
3. loads the LLM (the embedded llama.cpp model unless ``--backend`` says otherwise);
4. for each user: a brief of the compressed history, then the graph as of the demo date (live node
   progress), then personas, chosen tags and recommended items with explanation and judge grade;
5. writes one HTML report for all users (``report.html``) and prints its path.

**The demo date.** By default the graph runs *as of* the evaluation cutoff (2017-10-01 on
completejourney) and the towers are trained on data before it, so nothing from after it leaks into
the recommendations. That lets the demo show, for every recommended item, whether the household
actually bought it (or something in the same category) in the 28 days that followed — a small,
honest check rather than a claim. ``--now`` changes the date (the index is then trained before it).

**Users.** ``--user`` (repeatable) or a fixed-seed sample of ``--users N`` households from the
evaluation protocol's users (≥ 20 purchases before the date, ≥ 1 after), so every shown user has a
real future to compare against.

Every run goes to the run log, so ``app.py trace RUN_ID`` and ``app.py serve``'s ``/runs/{id}/view``
work on demo runs too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

DEMO_SEED = 7
WINDOW_DAYS = 28


@dataclass
class DemoUser:
    user_id: str
    brief: dict[str, Any]
    run_id: str | None = None
    output: dict[str, Any] = field(default_factory=dict)
    future: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    error: str | None = None


def demo_date(dataset: Any, now: datetime | None) -> datetime:
    from evals.protocol import CALIBRATED_CUTOFFS

    if now is not None:
        return now
    if dataset.name in CALIBRATED_CUTOFFS:
        return CALIBRATED_CUTOFFS[dataset.name]
    last = dataset.behaviors["ts"].max()
    return datetime(last.year, last.month, last.day) - timedelta(days=WINDOW_DAYS)


def pick_users(dataset: Any, now: datetime, n: int, seed: int = DEMO_SEED) -> list[str]:
    """``n`` users of the evaluation protocol at ``now`` (history before it and purchases after it)."""
    from evals.protocol import Protocol, make_split

    return make_split(dataset, Protocol(cutoff=now, window_days=WINDOW_DAYS, max_users=n, seed=seed)).users


def history_brief(dataset: Any, user_id: str, now: datetime, count_tokens: Any) -> dict[str, Any]:
    """The compressed history in brief: sizes, reduction, top categories, latest purchases."""
    from behavior.compress import compress_user

    h = compress_user(dataset, user_id, count_tokens, now=now)
    st, sm = h.stats, h.summary
    return {"events": st.events_total, "distinct_items": st.distinct_items_total,
            "raw_tokens": st.raw_tokens, "compressed_tokens": st.compressed_tokens,
            "reduction": round(st.reduction_overall, 3),
            "first_date": str(sm.first_date), "last_date": str(sm.last_date),
            "behaviors": sm.behavior_counts,
            "top_categories": [f"{c.category} ({c.count})" for c in sm.top_categories[:6]],
            "recent_purchases": [p.label for p in sm.recent_purchases[:6]]}


def future_check(dataset: Any, user_id: str, now: datetime, recs: list[dict[str, Any]]) -> dict[str, Any]:
    """Which recommended items (and categories) the user bought in the ``WINDOW_DAYS`` after ``now``."""
    import polars as pl

    b = dataset.behaviors
    after = b.filter((pl.col("user_id") == user_id) & (pl.col("ts") >= now)
                     & (pl.col("ts") < now + timedelta(days=WINDOW_DAYS)) & (pl.col("behavior") == "purchase"))
    before = b.filter((pl.col("user_id") == user_id) & (pl.col("ts") < now))
    items_after = set(after["item_id"].to_list())
    cat = dict(zip(dataset.items["item_id"].to_list(), dataset.items["category"].fill_null("").to_list(),
                   strict=True))
    cats_after = {cat.get(i, "") for i in items_after} - {""}
    seen_before = set(before["item_id"].to_list())
    per_item = {r["item_id"]: {"bought_item": r["item_id"] in items_after,
                               "bought_category": cat.get(r["item_id"], "") in cats_after,
                               "new_to_user": r["item_id"] not in seen_before} for r in recs}
    return {"window_days": WINDOW_DAYS, "purchases_after": after.height, "items": per_item,
            "item_hits": sum(v["bought_item"] for v in per_item.values()),
            "category_hits": sum(v["bought_category"] for v in per_item.values())}


def summarize(u: DemoUser) -> dict[str, Any]:
    out = u.output
    return {"user_id": u.user_id, "run_id": u.run_id, "status": out.get("status"), "error": u.error,
            "wall_s": round(u.wall_s, 1), "history": u.brief,
            "personas": out.get("personas", []),
            "tags": [{k: t.get(k) for k in ("tag", "persona", "intent", "grade")} for t in out.get("tags", [])],
            "recommendations": [{k: r.get(k) for k in ("item_id", "title", "category", "tag", "persona", "grade",
                                                        "score", "explanation")} for r in out.get("recommendations", [])],
            "future": u.future, "drops": len(out.get("drops", [])),
            "stage_s": stage_seconds(out.get("node_totals") or {})}


def stage_seconds(node_totals: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Seconds per graph stage, the stages that took at least 0.05 s, slowest first: the time the
    node's tasks covered (``span_s``; the K experts run together), else their summed wall time."""
    secs = {n: round(float(t.get("span_s", t.get("wall_s")) or 0.0), 1) for n, t in node_totals.items()}
    return dict(sorted(((n, v) for n, v in secs.items() if v >= 0.05), key=lambda kv: -kv[1]))


def default_report_path() -> Path:
    from core.paths import data_dir

    return data_dir() / "reports" / f"demo-{datetime.now():%Y%m%d-%H%M%S}.html"


def write_demo_report(store: Any, users: list[DemoUser], path: Path, *, title: str, meta: dict[str, Any]) -> Path:
    from report.html import render_report, write_report

    run_ids = [u.run_id for u in users if u.run_id]
    extra = {u.user_id: {"history": u.brief, "future": u.future} for u in users}
    html = render_report(store, run_ids, title=title, extra={"users": extra, "meta": meta})
    return write_report(path, html)


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0
