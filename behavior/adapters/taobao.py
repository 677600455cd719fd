"""``taobao:PATH``: Alibaba's Taobao UserBehavior CSV (Tianchi).

No header; the columns are ``user_id,item_id,category_id,behavior_type,timestamp`` with types
``pv`` (item page view), ``cart``, ``fav``, ``buy`` and unix-second timestamps. ``taobao`` without a
path reads the sample in the shared data folder (``core.paths.shared_data_dir()``).

* behaviours: ``pv`` -> view, ``cart`` -> cart, ``fav`` -> favorite, ``buy`` -> purchase. These four
  names are the format's own vocabulary, so they are mapped whatever the unknown-type policy says;
  any other name follows the policy. Timestamps become naive UTC (the platform's local time is UTC+8;
  only day-level bucketing depends on it, and one convention across datasets matters more).
* items: the dataset has no item text, so ``title = "item {id} in category {cat}"``, ``category`` =
  the category id, ``category_path`` = the same. An item seen under more than one category (one in the
  shared sample) takes its most frequent category (ties: the smallest id) and the clash is noted in
  the LoadReport.
* users: every user with a behaviour; no attributes. Items are built from the behaviours, so the
  missing-item policy never applies.
"""

from __future__ import annotations

import polars as pl

from behavior.adapters import register
from behavior.adapters.csv_generic import (
    LINE,
    behaviors_frame,
    normalise_types,
    parse_timestamps,
    read_csv_text,
    require_ids,
    resolve_location,
    users_from,
)
from behavior.policies import LoadPolicies
from behavior.schema import ITEM_SCHEMA, Dataset, LoadReport
from core.paths import shared_data_dir

COLUMNS = ("user_id", "item_id", "category_id", "behavior_type", "timestamp")
NATIVE_TYPES = {"pv": "view", "cart": "cart", "fav": "favorite", "buy": "purchase"}
SAMPLE = ("taobao_userbehavior_sample", "UserBehavior_sample.csv")


@register("taobao")
def load(arg: str | None, policies: LoadPolicies) -> Dataset:
    path = resolve_location(arg, "taobao", shared_data_dir().joinpath(*SAMPLE))
    file = str(path)
    report = LoadReport()
    df = read_csv_text(path, required=COLUMNS, columns=COLUMNS, report=report)
    report.rows_read = df.height + report.dropped.get("truncated_last_line", 0)
    df = require_ids(df, ["user_id", "item_id", "category_id"], file=file)
    df = parse_timestamps(df, "timestamp", file=file, unit=policies.timestamp_unit)
    df = normalise_types(df, "behavior_type", file=file, policies=policies, report=report,
                         native=NATIVE_TYPES)

    cats = (
        df.group_by("item_id", "category_id").agg(pl.len().alias("n"), pl.col(LINE).min().alias("first"))
        .sort(["item_id", "n", "category_id"], descending=[False, True, False])
    )
    n_multi = cats.group_by("item_id").len().filter(pl.col("len") > 1).height
    if n_multi:
        report.notes.append(f"{path.name}: {n_multi} item(s) appear under more than one category; "
                            f"each keeps its most frequent one")
    items = (
        cats.unique("item_id", keep="first", maintain_order=True)
        .select(
            pl.col("item_id"),
            pl.format("item {} in category {}", pl.col("item_id"), pl.col("category_id")).alias("title"),
            pl.col("category_id").alias("category"),
            pl.col("category_id").alias("category_path"),
            pl.lit(None, dtype=pl.Utf8).alias("brand"),
            pl.lit(None, dtype=pl.Float64).alias("price"),
            pl.concat_str([pl.lit('{"category_id": "'), pl.col("category_id"), pl.lit('"}')]).alias("attributes"),
        )
        .select(list(ITEM_SCHEMA))
        .cast(ITEM_SCHEMA)
    )
    behaviors = behaviors_frame(df)
    return Dataset(name="taobao", items=items, users=users_from(behaviors), behaviors=behaviors,
                   report=report, weights=dict(policies.weights))
