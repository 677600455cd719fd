"""``movielens:DIR``: the GroupLens ml-latest-small layout (``ratings.csv``, ``movies.csv``, optional
``tags.csv``). ``movielens`` without a folder reads the copy in the shared data folder
(``core.paths.shared_data_dir()``).

* items (``movies.csv``: movieId,title,genres): ``title`` as given (it carries the year, e.g.
  ``Toy Story (1995)``); ``category_path`` = the genres joined by `` > `` (MovieLens genres are a
  flat set, so the "path" is just the list in the file's order); ``category`` = the first genre;
  ``(no genres listed)`` gives an empty category. Free attributes: ``genres`` (the raw ``|`` list) and
  ``year`` when the title ends with one.
* behaviours (``ratings.csv``: userId,movieId,rating,timestamp): one behaviour per rating, ``value``
  = the star rating (0.5-5). A rating of 4.0 or more is a ``favorite`` (the user liked it), anything
  lower a ``review``. One event per rating, so counts stay equal to the file's, and the split gives
  compression and the towers a like/dislike signal the bare type "review" would hide. The threshold
  is ``LIKE_THRESHOLD``.
* reference tags (``tags.csv``: userId,movieId,tag,timestamp): kept as ``reference_tags``, the
  human-written reference for tag prediction. Tags naming a movie not in ``movies.csv`` follow the
  missing-item policy like ratings (``placeholder`` keeps them).
* users: every user with a rating or a tag; no attributes (ml-latest-small has none).
"""

from __future__ import annotations

import polars as pl

from behavior.adapters import register
from behavior.adapters.csv_generic import (
    LINE,
    apply_missing_items,
    behaviors_frame,
    parse_float,
    parse_timestamps,
    read_csv_text,
    require_ids,
    require_unique,
    resolve_location,
    users_from,
)
from behavior.policies import LoadPolicies
from behavior.schema import ITEM_SCHEMA, TAG_SCHEMA, Dataset, LoadReport
from core.errors import DataError
from core.paths import shared_data_dir

LIKE_THRESHOLD = 4.0
SAMPLE = "movielens_latest_small"
NO_GENRES = "(no genres listed)"


def _items(path, report: LoadReport) -> pl.DataFrame:
    file = str(path)
    df = read_csv_text(path, required=("movieId", "title", "genres"), report=report)
    df = require_ids(df.rename({"movieId": "item_id"}), ["item_id"], file=file)
    require_unique(df, "item_id", file=file)
    genres = pl.col("genres").str.strip_chars().fill_null("")
    genre_list = (
        pl.when(genres == NO_GENRES).then(pl.lit("")).otherwise(genres)
        .str.split("|").list.eval(pl.element().str.strip_chars()).list.eval(pl.element().filter(pl.element() != ""))
    )
    year = pl.col("title").str.extract(r"\((\d{4})\)\s*$", 1)
    df = df.with_columns(
        pl.col("title").str.strip_chars().fill_null(""),
        genre_list.list.join(" > ").alias("category_path"),
        genre_list.list.first().fill_null("").alias("category"),
        pl.lit(None, dtype=pl.Utf8).alias("brand"),
        pl.lit(None, dtype=pl.Float64).alias("price"),
        pl.struct(genres=genres, year=year).struct.json_encode().alias("attributes"),
    )
    # drop a null year from the JSON so attributes stay str -> str
    df = df.with_columns(pl.col("attributes").str.replace(r',"year":null', ""))
    return df.select(list(ITEM_SCHEMA)).cast(ITEM_SCHEMA)


@register("movielens")
def load(arg: str | None, policies: LoadPolicies) -> Dataset:
    root = resolve_location(arg, "movielens", shared_data_dir() / SAMPLE)
    if not root.is_dir():
        raise DataError("not a directory (movielens needs the ml-latest-small folder)", file=str(root))
    report = LoadReport()
    items = _items(root / "movies.csv", report)

    rpath = root / "ratings.csv"
    rfile = str(rpath)
    r = read_csv_text(rpath, required=("userId", "movieId", "rating", "timestamp"), report=report)
    report.rows_read = r.height + report.dropped.get("truncated_last_line", 0)
    r = require_ids(r.rename({"userId": "user_id", "movieId": "item_id"}), ["user_id", "item_id"], file=rfile)
    r = parse_float(r, "rating", file=rfile)
    bad = r.filter(pl.col("rating").is_null())
    if bad.height:
        raise DataError("missing rating", file=rfile, row=bad.row(0, named=True)[LINE])
    r = parse_timestamps(r, "timestamp", file=rfile, unit=policies.timestamp_unit)
    r = r.with_columns(
        pl.when(pl.col("rating") >= LIKE_THRESHOLD).then(pl.lit("favorite")).otherwise(pl.lit("review"))
        .alias("behavior"),
        pl.col("rating").alias("value"),
        pl.lit(None, dtype=pl.Utf8).alias("query"),
    )
    r, items = apply_missing_items(r, items, file=rfile, catalogue=str(root / "movies.csv"),
                                   policies=policies, report=report)
    behaviors = behaviors_frame(r)

    tags = None
    tpath = root / "tags.csv"
    if tpath.exists():
        tfile = str(tpath)
        t = read_csv_text(tpath, required=("userId", "movieId", "tag", "timestamp"), report=report)
        t = require_ids(t.rename({"userId": "user_id", "movieId": "item_id"}), ["user_id", "item_id"], file=tfile)
        t = parse_timestamps(t, "timestamp", file=tfile, unit=policies.timestamp_unit)
        t = t.with_columns(pl.col("tag").str.strip_chars())
        empty = pl.col("tag").is_null() | (pl.col("tag") == "")
        report.drop("empty_tag", int(t.select(empty.sum()).item()))
        t = t.filter(~empty)
        sub = LoadReport()
        t, items = apply_missing_items(t, items, file=tfile, catalogue=str(root / "movies.csv"),
                                       policies=policies, report=sub)
        for reason, n in sub.dropped.items():
            report.drop(f"tag_{reason}", n)
        report.placeholders += sub.placeholders
        tags = t.select(list(TAG_SCHEMA)).cast(TAG_SCHEMA)
    else:
        report.notes.append(f"{tpath.name} not found: no reference tags")

    users = users_from(pl.concat([behaviors.select("user_id"), tags.select("user_id")]) if tags is not None
                       else behaviors)
    return Dataset(name="movielens", items=items, users=users, behaviors=behaviors, reference_tags=tags,
                   report=report, weights=dict(policies.weights))
