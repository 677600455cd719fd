"""``csv:DIR``: the generic schema a user brings their own logs in, plus the CSV helpers every
file-based adapter (taobao, movielens) shares.

The exact columns are documented in ``docs/data.md``. In short:

* ``items.csv``: ``item_id``, ``title`` (required); ``category``, ``category_path`` (joined by
  ``>``), ``brand``, ``price`` (optional); any other column becomes a free attribute.
* ``behaviors.csv``: ``user_id``, ``item_id``, ``behavior``, ``timestamp`` (required); ``query``,
  ``value`` (optional). Timestamps are ISO-8601 (``2017-11-03``, ``2017-11-03T14:22:05``, basic
  ``20171103``, with or without an offset; offsets are converted to UTC) or unix seconds,
  milliseconds or microseconds, detected once per column (see :func:`parse_timestamps`).
* ``users.csv`` (optional): ``user_id`` plus any columns, which become user attributes.

Design decisions
----------------
* Everything is read as text (``infer_schema=False``) and validated column by column with polars, so
  a bad value is reported as "file, row, problem" instead of surfacing as a parser traceback.
* Row numbers are 1-based file line numbers with the header on line 1 (a header-less file such as
  Taobao's starts its data on line 1). When a quoted field spans lines, the row is the line where the
  record starts; the file is re-scanned with :mod:`csv` only on the error path to find it.
* Strict about data, lenient about layout: ids and column names are stripped of surrounding
  whitespace; an empty id, a missing column, an unparseable timestamp, price or value is an error.
* One exception: a final line without a line terminator that has fewer fields than the header is a
  truncated write (``head -c`` samples end like this, the shared Taobao sample among them). It is
  dropped and counted as ``truncated_last_line``; a short line anywhere else is an error.
* What the policies decide (missing items, unknown behaviour types) is counted in the LoadReport by
  reason, so ``data stats`` shows every dropped row.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from behavior.adapters import register
from behavior.policies import LoadPolicies, TimestampUnit
from behavior.schema import (
    BEHAVIOR_SCHEMA,
    CANONICAL_TYPES,
    ITEM_SCHEMA,
    USER_SCHEMA,
    Dataset,
    LoadReport,
)
from core.dates import EARLIEST, LATEST
from core.errors import DataError

LINE = "__line"  # the 1-based file line of each record, kept beside the data while validating

ITEM_REQUIRED = ("item_id", "title")
ITEM_KNOWN = ("item_id", "title", "category", "category_path", "brand", "price")
BEHAVIOR_REQUIRED = ("user_id", "item_id", "behavior", "timestamp")
BEHAVIOR_KNOWN = ("user_id", "item_id", "behavior", "timestamp", "query", "value")

_NUMERIC_TS = re.compile(r"^[+-]?\d+(\.\d+)?$")


# ----- reading --------------------------------------------------------------------------------------
def _record_line(path: Path, record: int, has_header: bool) -> int:
    """File line (1-based) where data record ``record`` (0-based) starts; exact with multi-line fields."""
    target = record + (1 if has_header else 0)
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        start = 1
        for i, _ in enumerate(reader):
            if i == target:
                return start
            start = reader.line_num + 1
    return start


def _locate_bad_record(path: Path, n_fields: int, has_header: bool) -> tuple[int, int] | None:
    """(line, fields) of the first record whose field count differs from ``n_fields``."""
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        start = 1
        for i, rec in enumerate(reader):
            if not (has_header and i == 0) and rec and len(rec) != n_fields:
                return start, len(rec)
            start = reader.line_num + 1
    return None


def _truncated_tail(path: Path, n_fields: int) -> bool:
    """True when the file's last line has no terminator and fewer fields than ``n_fields``."""
    with path.open("rb") as f:
        f.seek(0, 2)
        size = f.tell()
        if size == 0:
            return False
        f.seek(max(0, size - 65536))
        tail = f.read()
    if tail.endswith(b"\n") or tail.endswith(b"\r"):
        return False
    last = tail.rsplit(b"\n", 1)[-1].decode("utf-8", errors="replace")
    fields = next(csv.reader([last]), [])
    return 0 < len(fields) < n_fields


def read_csv_text(
    path: Path,
    *,
    required: Sequence[str],
    columns: Sequence[str] | None = None,
    report: LoadReport | None = None,
) -> pl.DataFrame:
    """Read a CSV as all-text columns plus ``__line`` (1-based file line of each record).

    With ``columns`` the file has no header and these are its column names; otherwise the header is
    read and every name in ``required`` must be in it."""
    has_header = columns is None
    fname = str(path)
    if not path.is_file():
        raise DataError("file not found" if not path.exists() else "not a file", file=fname)
    try:
        df = pl.read_csv(
            path,
            has_header=has_header,
            new_columns=list(columns) if columns is not None else None,
            infer_schema=False,
            truncate_ragged_lines=False,
            raise_if_empty=True,
        )
    except pl.exceptions.NoDataError:
        raise DataError("the file is empty" + ("" if columns else " (no header row)"), file=fname,
                        row=1) from None
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as e:
        n = len(columns) if columns is not None else len(_header(path))
        bad = _locate_bad_record(path, n, has_header)
        if bad is not None:
            raise DataError(f"expected {n} fields, found {bad[1]}", file=fname, row=bad[0]) from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"could not be read as CSV: {first}", file=fname) from None

    if has_header:
        df = df.rename({c: c.strip().lstrip("\ufeff").strip() for c in df.columns})
        missing = [c for c in required if c not in df.columns]
        if missing:
            names = ", ".join(repr(c) for c in missing)
            raise DataError(f"missing column{'s' if len(missing) > 1 else ''} {names}; the header has: "
                            f"{', '.join(df.columns)}", file=fname, row=1)
    df = df.with_row_index(LINE, offset=2 if has_header else 1).with_columns(pl.col(LINE).cast(pl.Int64))

    # polars fills short records with nulls: a truncated final line is dropped (counted), any
    # other short record is caught as a missing value by the column checks.
    if df.height and _truncated_tail(path, len(df.columns) - 1):
        df = df.head(df.height - 1)
        if report is not None:
            report.drop("truncated_last_line")
            report.notes.append(f"{path.name}: the last line is incomplete (no line end, too few "
                                f"fields) and was dropped as a truncated write")

    # Line numbers equal record numbers unless a quoted field spans lines; fix them up only then.
    if df.height and _has_multiline_records(path, df.height, has_header):
        lines = _all_record_lines(path, has_header)
        df = df.with_columns(pl.Series(LINE, lines[: df.height], dtype=pl.Int64))
    return df


def _header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        return next(csv.reader(f), [])


def _has_multiline_records(path: Path, n_records: int, has_header: bool) -> bool:
    """Cheap check: more physical lines than records means some record spans lines."""
    with path.open("rb") as f:
        n_lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    # a missing final newline makes n_lines one short; blank lines make it longer (rare; harmless)
    return n_lines > n_records + (1 if has_header else 0)


def _all_record_lines(path: Path, has_header: bool) -> list[int]:
    out: list[int] = []
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        start = 1
        for i, rec in enumerate(reader):
            if rec and not (has_header and i == 0):
                out.append(start)
            start = reader.line_num + 1
    return out


# ----- validation -----------------------------------------------------------------------------------
def first_bad(df: pl.DataFrame, mask: pl.Series | pl.Expr) -> dict | None:
    """The first row (as a dict, with ``__line``) where ``mask`` is true, or None."""
    bad = df.filter(mask)
    return bad.row(0, named=True) if bad.height else None


def require_ids(df: pl.DataFrame, cols: Iterable[str], *, file: str) -> pl.DataFrame:
    """Strip the id columns and fail on the first missing or empty one."""
    cols = list(cols)
    df = df.with_columns([pl.col(c).str.strip_chars() for c in cols])
    for c in cols:
        row = first_bad(df, pl.col(c).is_null() | (pl.col(c) == ""))
        if row is not None:
            raise DataError(f"missing or empty {c}", file=file, row=row[LINE])
    return df


def require_unique(df: pl.DataFrame, col: str, *, file: str) -> None:
    dup = df.filter(pl.col(col).is_duplicated())
    if dup.height:
        first = dup.row(0, named=True)
        later = dup.filter(pl.col(col) == first[col]).row(1, named=True)
        raise DataError(f"duplicate {col} {first[col]!r} (first on row {first[LINE]})", file=file,
                        row=later[LINE])


def parse_float(df: pl.DataFrame, col: str, *, file: str, what: str | None = None) -> pl.DataFrame:
    """Parse an optional numeric column; empty stays null, anything else unparseable is an error."""
    s = pl.col(col).str.strip_chars()
    parsed = s.cast(pl.Float64, strict=False)
    row = first_bad(df, s.is_not_null() & (s != "") & parsed.is_null())
    if row is not None:
        raise DataError(f"unparseable {what or col} {row[col]!r} (expected a number)", file=file,
                        row=row[LINE])
    return df.with_columns(parsed.alias(col))


def _parse_iso(v: str) -> datetime | None:
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        return None
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return dt


#: micro-seconds per unit of an epoch column
_EPOCH_US = {"s": 1_000_000, "ms": 1_000, "us": 1}
#: ``auto`` picks the epoch unit from the column's largest magnitude: seconds up to 1e11 (year 5138),
#: milliseconds up to 1e14, microseconds up to 1e17; beyond that nothing sane is left to guess.
_EPOCH_LIMITS = (("s", 1e11), ("ms", 1e14), ("us", 1e17))
_EPOCH_US_RANGE = (int(EARLIEST.replace(tzinfo=UTC).timestamp()) * 1_000_000,
                   int(LATEST.replace(tzinfo=UTC).timestamp()) * 1_000_000)
_BASIC_DATE = r"^\d{8}$"


def _iso_column(df: pl.DataFrame, vals: pl.Series, col: str, *, file: str, unit: str) -> pl.Series:
    uniq = vals.unique()
    lookup = pl.DataFrame({"__raw": uniq,
                           "__dt": pl.Series([_parse_iso(v) for v in uniq.to_list()], dtype=pl.Datetime("us"))})
    ts = pl.DataFrame({"__raw": vals}).join(lookup, on="__raw", how="left", maintain_order="left")["__dt"]
    bad = ts.is_null()
    if bad.any():
        r = df.filter(bad).row(0, named=True)
        mixed = unit == "auto" and bool(vals.str.contains(_NUMERIC_TS.pattern).any())
        hint = ("; the column mixes ISO dates with plain numbers, and one format per column is required"
                if mixed else "")
        raise DataError(f"unparseable {col} {r[col]!r} (expected ISO-8601 such as 2017-11-03T14:22:05 or "
                        f"20171103, or unix seconds/milliseconds/microseconds){hint}", file=file, row=r[LINE])
    return ts


def _epoch_column(df: pl.DataFrame, vals: pl.Series, col: str, *, file: str, unit: str) -> pl.Series:
    num = vals.cast(pl.Float64, strict=False)
    bad = num.is_null()
    if bad.any():
        r = df.filter(bad).row(0, named=True)
        what = "unix epoch numbers (detected)" if unit == "auto" else f"unix {unit} (the timestamp unit)"
        raise DataError(f"unparseable {col} {r[col]!r} (the column holds {what}; one format per column)",
                        file=file, row=r[LINE])
    if unit == "auto":
        peak = float(num.abs().max() or 0.0)
        unit = next((u for u, limit in _EPOCH_LIMITS if peak < limit), "")
        if not unit:
            r = df.filter(num.abs() == peak).row(0, named=True)
            raise DataError(f"{col} {r[col]!r} is too large for unix seconds, milliseconds or microseconds",
                            file=file, row=r[LINE])
    us = (num * _EPOCH_US[unit]).round(0)
    lo, hi = _EPOCH_US_RANGE
    out = (us < lo) | (us >= hi)
    if out.any():
        r = df.filter(out).row(0, named=True)
        raise DataError(f"{col} {r[col]!r} read as unix {unit} is outside the supported range "
                        f"{EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d} (set the timestamp unit if it was misread)",
                        file=file, row=r[LINE])
    return us.cast(pl.Int64).cast(pl.Datetime("us"))


def parse_timestamps(df: pl.DataFrame, col: str, *, file: str, out: str = "ts",
                     unit: TimestampUnit = "auto") -> pl.DataFrame:
    """Parse ``col`` into ``out`` (naive UTC ``Datetime[us]``), one format for the whole column.

    ``unit``: ``iso`` (ISO-8601, extended or basic: ``2017-11-03``, ``20171103``, ``20171103T101500``),
    ``s``/``ms``/``us`` (unix epoch), or ``auto``. ``auto`` decides once per column, never per row:
    a column whose values are mostly plain numbers is numeric, otherwise ISO (a tie goes to the
    first row's format); a numeric column whose
    numbers are all 8-digit valid ``YYYYMMDD`` dates in range is ISO basic; any other numeric column
    is an epoch whose unit comes from its largest magnitude. A value that does not fit the column's
    format is an error at its row (so a column mixing ISO dates and epoch numbers fails at the first
    minority value), and so is any instant outside ``core.dates``' range."""
    s = pl.col(col).str.strip_chars()
    row = first_bad(df, s.is_null() | (s == ""))
    if row is not None:
        raise DataError(f"missing {col}", file=file, row=row[LINE])
    vals = df[col].str.strip_chars()
    if unit == "auto":
        numeric = vals.str.contains(_NUMERIC_TS.pattern)
        n_num, n = int(numeric.sum()), len(vals)
        mostly_numeric = 2 * n_num > n or (2 * n_num == n and bool(numeric[0]))  # a tie: the first row's
        unit = "auto" if mostly_numeric else "iso"
        nums = vals.filter(numeric)
        if unit == "auto" and nums.str.contains(_BASIC_DATE).all():
            as_date = nums.str.strptime(pl.Date, "%Y%m%d", strict=False)
            if as_date.is_not_null().all() and as_date.min() >= EARLIEST.date() and as_date.max() < LATEST.date():
                unit = "iso"
    if unit == "iso":
        ts = _iso_column(df, vals, col, file=file, unit=unit)
        out_of_range = (ts < EARLIEST) | (ts >= LATEST)
        if out_of_range.any():
            r = df.filter(out_of_range).row(0, named=True)
            raise DataError(f"{col} {r[col]!r} is outside the supported range {EARLIEST:%Y-%m-%d} to "
                            f"{LATEST:%Y-%m-%d}", file=file, row=r[LINE])
    else:
        ts = _epoch_column(df, vals, col, file=file, unit=unit)
    return df.with_columns(ts.alias(out))


def normalise_types(
    df: pl.DataFrame,
    col: str,
    *,
    file: str,
    policies: LoadPolicies,
    report: LoadReport,
    native: dict[str, str] | None = None,
) -> pl.DataFrame:
    """Lower-case the behaviour column into ``behavior`` and apply the unknown-type policy.

    Canonical types and any type with a configured weight are kept as they are. ``native`` maps the
    format's own vocabulary (e.g. Taobao's ``pv``) whatever the policy says, because those names are
    part of the format, not unknown, and so do the aliases in ``policies.type_map``. Other names follow
    ``policies.unknown_type``."""
    native = native or {}
    df = df.with_columns(pl.col(col).str.strip_chars().str.to_lowercase().alias("behavior"))
    row = first_bad(df, pl.col("behavior").is_null() | (pl.col("behavior") == ""))
    if row is not None:
        raise DataError(f"missing {col}", file=file, row=row[LINE])
    known = set(CANONICAL_TYPES) | set(policies.weights)
    mapping: dict[str, str | None] = {}
    for raw in sorted(df["behavior"].unique().to_list()):
        if raw in native:
            mapping[raw] = native[raw]
        elif raw in known:
            mapping[raw] = raw
        elif raw in policies.type_map:  # documented aliases (``buy``) are known under every policy
            mapping[raw] = policies.type_map[raw]
        else:
            mapping[raw] = None
    for raw, tgt in mapping.items():
        if tgt is not None and tgt != raw:
            report.mapped_types[raw] = tgt
    unknown = sorted(k for k, v in mapping.items() if v is None)
    if unknown and policies.unknown_type == "fail":
        r = first_bad(df, pl.col("behavior").is_in(unknown))
        assert r is not None
        raise DataError(f"unknown behaviour type {r[col]!r} (known: {', '.join(sorted(known))}; "
                        f"the unknown-type policy is 'fail', use 'map' or 'drop' to load it)",
                        file=file, row=r[LINE])
    if unknown:
        counts = df.filter(pl.col("behavior").is_in(unknown))["behavior"].value_counts(sort=True)
        report.drop("unknown_behavior_type", int(counts["count"].sum()))
        detail = ", ".join(f"{r['behavior']!r} x{r['count']}" for r in counts.iter_rows(named=True))
        how = "no mapping in the type map" if policies.unknown_type == "map" else "policy 'drop'"
        report.notes.append(f"{Path(file).name}: dropped unknown behaviour types ({how}): {detail}")
    return (
        df.with_columns(pl.col("behavior").replace_strict(mapping, default=None, return_dtype=pl.Utf8))
        .filter(pl.col("behavior").is_not_null())
    )


def apply_missing_items(
    beh: pl.DataFrame,
    items: pl.DataFrame,
    *,
    file: str,
    catalogue: str,
    policies: LoadPolicies,
    report: LoadReport,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Apply the missing-item policy. Returns (behaviours, items with any placeholders added)."""
    known = beh["item_id"].is_in(items["item_id"].implode())
    n_missing = int((~known).sum())
    if not n_missing:
        return beh, items
    if policies.missing_item == "fail":
        r = beh.filter(~known).row(0, named=True)
        raise DataError(f"item {r['item_id']!r} is not in the catalogue ({catalogue}); the missing-item "
                        f"policy is 'fail', use 'placeholder' or 'drop' to load it", file=file,
                        row=r[LINE])
    if policies.missing_item == "drop":
        report.drop("item_not_in_catalogue", n_missing)
        return beh.filter(known), items
    report.placeholders += n_missing
    ids = beh.filter(~known)["item_id"].unique().sort()
    return beh, pl.concat([items, placeholder_items(ids)])


def placeholder_items(ids: pl.Series) -> pl.DataFrame:
    """Catalogue rows for items a behaviour names but the catalogue lacks (missing-item 'placeholder')."""
    return pl.DataFrame({"item_id": ids.cast(pl.Utf8)}).with_columns(
        pl.concat_str([pl.lit("Unknown item "), pl.col("item_id")]).alias("title"),
        pl.lit("").alias("category"),
        pl.lit("").alias("category_path"),
        pl.lit(None, dtype=pl.Utf8).alias("brand"),
        pl.lit(None, dtype=pl.Float64).alias("price"),
        pl.lit('{"placeholder": "true"}').alias("attributes"),
    ).select(list(ITEM_SCHEMA))


def attributes_json(df: pl.DataFrame, cols: Sequence[str]) -> pl.Series:
    """One JSON object per row from ``cols`` (null and empty values left out)."""
    if not cols:
        return pl.Series("attributes", ["{}"] * df.height, dtype=pl.Utf8)
    rows = df.select([pl.col(c).str.strip_chars() for c in cols]).iter_rows()
    return pl.Series("attributes", [json.dumps({k: v for k, v in zip(cols, r, strict=True) if v},
                                               ensure_ascii=False) for r in rows], dtype=pl.Utf8)


def behaviors_frame(df: pl.DataFrame) -> pl.DataFrame:
    """Select and cast to BEHAVIOR_SCHEMA (adding null query/value when absent)."""
    for c in ("query", "value"):
        if c not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=BEHAVIOR_SCHEMA[c]).alias(c))
    return df.select(list(BEHAVIOR_SCHEMA)).cast(BEHAVIOR_SCHEMA)


def users_from(beh: pl.DataFrame, attrs: pl.DataFrame | None = None) -> pl.DataFrame:
    """Every user with a behaviour, plus any listed in ``attrs`` (user_id, attributes)."""
    ids = beh.select("user_id").unique()
    if attrs is None:
        return ids.with_columns(pl.lit("{}").alias("attributes")).select(list(USER_SCHEMA))
    return (
        ids.join(attrs, on="user_id", how="full", coalesce=True)
        .with_columns(pl.col("attributes").fill_null("{}"))
        .select(list(USER_SCHEMA))
    )


def resolve_location(arg: str | None, kind: str, default: Path | None = None) -> Path:
    if not arg:
        if default is None:
            raise DataError(f"the {kind} dataset needs a location: use --dataset {kind}:PATH")
        return default
    return Path(arg).expanduser()


# ----- the csv adapter -------------------------------------------------------------------------------
def _normalise_path(expr: pl.Expr) -> pl.Expr:
    """``a>b > c`` -> ``a > b > c`` (parts stripped, empty parts removed)."""
    return (
        expr.str.split(">")
        .list.eval(pl.element().str.strip_chars())
        .list.eval(pl.element().filter(pl.element() != ""))
        .list.join(" > ")
    )


def load_items_csv(path: Path, report: LoadReport) -> pl.DataFrame:
    file = str(path)
    df = read_csv_text(path, required=ITEM_REQUIRED, report=report)
    df = require_ids(df, ["item_id"], file=file)
    require_unique(df, "item_id", file=file)
    for c in ("category", "category_path", "brand", "price"):
        if c not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=pl.Utf8).alias(c))
    df = parse_float(df, "price", file=file)
    df = df.with_columns(
        pl.col("title").str.strip_chars().fill_null(""),
        pl.col("brand").str.strip_chars(),
        _normalise_path(pl.col("category_path").fill_null("")).alias("category_path"),
        pl.col("category").str.strip_chars().fill_null(""),
    )
    # one of category / category_path may be given; each fills the other
    df = df.with_columns(
        pl.when(pl.col("category") == "")
        .then(pl.col("category_path").str.split(" > ").list.last().fill_null(""))
        .otherwise(pl.col("category")).alias("category"),
        pl.when(pl.col("category_path") == "").then(pl.col("category").fill_null(""))
        .otherwise(pl.col("category_path")).alias("category_path"),
    ).with_columns(pl.col("category").fill_null(""))
    extra = [c for c in df.columns if c not in ITEM_KNOWN and c != LINE]
    df = df.with_columns(attributes_json(df, extra))
    return df.select(list(ITEM_SCHEMA)).cast(ITEM_SCHEMA)


def load_users_csv(path: Path, report: LoadReport) -> pl.DataFrame:
    file = str(path)
    df = read_csv_text(path, required=("user_id",), report=report)
    df = require_ids(df, ["user_id"], file=file)
    require_unique(df, "user_id", file=file)
    extra = [c for c in df.columns if c not in ("user_id", LINE)]
    return df.with_columns(attributes_json(df, extra)).select(list(USER_SCHEMA))


@register("csv")
def load(arg: str | None, policies: LoadPolicies) -> Dataset:
    root = resolve_location(arg, "csv")
    if not root.is_dir():
        raise DataError("not a directory (the csv dataset needs a folder with items.csv and behaviors.csv)",
                        file=str(root))
    report = LoadReport()
    items = load_items_csv(root / "items.csv", report)

    bpath = root / "behaviors.csv"
    bfile = str(bpath)
    b = read_csv_text(bpath, required=BEHAVIOR_REQUIRED, report=report)
    report.rows_read = b.height + report.dropped.get("truncated_last_line", 0)
    b = require_ids(b, ["user_id", "item_id"], file=bfile)
    b = parse_timestamps(b, "timestamp", file=bfile, unit=policies.timestamp_unit)
    if "value" in b.columns:
        b = parse_float(b, "value", file=bfile)
    if "query" in b.columns:
        b = b.with_columns(pl.col("query").str.strip_chars())
        b = b.with_columns(pl.when(pl.col("query") == "").then(None).otherwise(pl.col("query")).alias("query"))
    b = normalise_types(b.rename({"behavior": "behavior_raw"}), "behavior_raw", file=bfile,
                        policies=policies, report=report)
    b, items = apply_missing_items(b, items, file=bfile, catalogue=str(root / "items.csv"),
                                   policies=policies, report=report)
    behaviors = behaviors_frame(b)

    upath = root / "users.csv"
    attrs = load_users_csv(upath, report) if upath.exists() else None
    users = users_from(behaviors, attrs)
    if attrs is not None:
        extra_users = users.height - attrs.height
        if extra_users:
            report.notes.append(f"users.csv: {extra_users} users with behaviours are not listed there "
                                f"(kept, with no attributes)")
    return Dataset(name=f"csv:{root.name}", items=items, users=users, behaviors=behaviors, report=report,
                   weights=dict(policies.weights))
