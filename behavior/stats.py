"""Dataset statistics for ``app.py data stats``: sizes, behaviour types, time range, history lengths
and what loading dropped. Returns plain JSON-able dicts; the CLI renders them.

History-length percentiles are over users that have at least one behaviour, computed with the
``nearest`` rule (each percentile is an actual history length); users listed without any behaviour
(possible with ``csv:`` and its ``users.csv``) are counted separately.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from behavior.schema import Dataset

PERCENTILES = (5, 25, 50, 75, 95, 99)


def dataset_stats(ds: Dataset) -> dict[str, Any]:
    b = ds.behaviors
    per_user = b.group_by("user_id").len()["len"]
    counts = b["behavior"].value_counts().sort(["count", "behavior"], descending=[True, False])
    lengths: dict[str, Any] = {}
    if per_user.len():
        for p in PERCENTILES:
            lengths[f"p{p}"] = int(per_user.quantile(p / 100, interpolation="nearest"))
        lengths["min"] = int(per_user.min())
        lengths["max"] = int(per_user.max())
        lengths["mean"] = round(float(per_user.mean()), 1)
    tags = None
    if ds.reference_tags is not None:
        t = ds.reference_tags
        tags = {
            "tags": t.height,
            "users": t["user_id"].n_unique(),
            "items": t["item_id"].n_unique(),
            "distinct_tags": t["tag"].str.to_lowercase().n_unique(),
        }
    first, last = b["ts"].min(), b["ts"].max()
    return {
        "dataset": ds.name,
        "users": ds.users.height,
        "users_with_history": per_user.len(),
        "items": ds.items.height,
        "items_with_behavior": b["item_id"].n_unique(),
        "behaviors": b.height,
        "behavior_counts": {r["behavior"]: int(r["count"]) for r in counts.iter_rows(named=True)},
        "time_range": {"first": first.isoformat() if first else None, "last": last.isoformat() if last else None,
                       "days": (last - first).days if first and last else 0},
        "history_length": lengths,
        "categories": ds.items.filter(pl.col("category") != "")["category"].n_unique(),
        "reference_tags": tags,
        "load_report": ds.report.as_dict(),
    }
