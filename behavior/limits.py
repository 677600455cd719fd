"""Size caps on dataset text, applied once at load time (``load_dataset``) and counted in the
LoadReport (``truncated``, by field).

One oversized field (a 10-MB title) otherwise travels everywhere: into every prompt, checkpoint,
run-log row and HTML report of every user who touched the item. Capping at the door keeps each of
those bounded without a cap of its own. The limits are far above any real catalogue text, so real
data is not changed; a cut value ends in "…".
"""

from __future__ import annotations

import json

import polars as pl

from behavior.schema import Dataset

#: characters kept per item text column
ITEM_TEXT_MAX = {"title": 300, "category": 120, "category_path": 400, "brand": 120}
#: characters kept per search query
QUERY_MAX = 300
#: characters kept per attribute key / value (items and users)
ATTR_KEY_MAX = 60
ATTR_VALUE_MAX = 300
ELLIPSIS = "…"


def _cap_column(df: pl.DataFrame, col: str, limit: int, counts: dict[str, int], label: str) -> pl.DataFrame:
    if col not in df.columns:
        return df
    long = df[col].str.len_chars() > limit
    n = int(long.fill_null(False).sum())
    if not n:
        return df
    counts[label] = counts.get(label, 0) + n
    cut = pl.concat_str([pl.col(col).str.slice(0, limit - 1), pl.lit(ELLIPSIS)])
    return df.with_columns(pl.when(pl.col(col).str.len_chars() > limit).then(cut).otherwise(pl.col(col)).alias(col))


def _cap_text(v: str, limit: int) -> str:
    return v if len(v) <= limit else v[: limit - 1] + ELLIPSIS


def _cap_attributes(df: pl.DataFrame, counts: dict[str, int], label: str) -> pl.DataFrame:
    """Attributes are a JSON object per row; only rows long enough to hold an oversized part are parsed."""
    if "attributes" not in df.columns:
        return df
    longest = min(ATTR_KEY_MAX, ATTR_VALUE_MAX)
    suspect = df["attributes"].str.contains(r'"(?:[^"\\]|\\.){' + str(longest + 1) + r',}"')  # a JSON string that long
    if not bool(suspect.fill_null(False).any()):
        return df
    n = 0

    def cap(raw: str | None) -> str | None:
        nonlocal n
        if raw is None:
            return raw
        obj = json.loads(raw)
        capped = {_cap_text(str(k), ATTR_KEY_MAX): _cap_text(str(v), ATTR_VALUE_MAX) for k, v in obj.items()}
        if capped != {str(k): str(v) for k, v in obj.items()}:
            n += 1
            return json.dumps(capped, ensure_ascii=False)
        return raw

    vals = df["attributes"].to_list()
    mask = suspect.fill_null(False).to_list()
    out = [cap(v) if m else v for v, m in zip(vals, mask, strict=True)]
    if n:
        counts[label] = counts.get(label, 0) + n
    return df.with_columns(pl.Series("attributes", out, dtype=pl.Utf8))


def cap_texts(ds: Dataset) -> Dataset:
    """Cap every free-text field of ``ds`` in place and count what was cut in ``ds.report.truncated``."""
    counts = ds.report.truncated
    items = ds.items
    for col, limit in ITEM_TEXT_MAX.items():
        items = _cap_column(items, col, limit, counts, f"item_{col}")
    ds.items = _cap_attributes(items, counts, "item_attributes")
    ds.users = _cap_attributes(ds.users, counts, "user_attributes")
    ds.behaviors = _cap_column(ds.behaviors, "query", QUERY_MAX, counts, "query")
    if counts:
        ds.report.notes.append("texts cut to their load-time caps (behavior/limits.py): "
                               + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))
    return ds
