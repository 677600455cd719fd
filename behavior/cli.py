"""``app.py data ...``: inspect a dataset and a user's compressed history.

* ``data stats [--dataset D] [--json]``: sizes, counts per behaviour type, time range, history-length
  percentiles, reference tags and the load report (every row dropped by a policy, by reason).
* ``data compress --user U [--dataset D] [--budget N] [--now DATE] [--json]``: the compressed
  context with raw and compressed token counts.

``--json`` prints one JSON document on stdout and nothing else there (notes go to stderr). Errors
the user can fix (bad data, unknown user, empty history) are IntentRecErrors: ``app.py`` prints them
as one line and exits with status 2.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

data_app = typer.Typer(no_args_is_help=True)
console = Console()
err = Console(stderr=True)

DATASET_HELP = "completejourney (default), taobao[:PATH], movielens[:DIR] or csv:DIR."


class MissingItem(StrEnum):
    placeholder = "placeholder"
    drop = "drop"
    fail = "fail"


class UnknownType(StrEnum):
    map = "map"
    drop = "drop"
    fail = "fail"


class TimestampUnit(StrEnum):
    auto = "auto"
    iso = "iso"
    s = "s"
    ms = "ms"
    us = "us"


def _load(dataset: str | None, missing_item: MissingItem | None, unknown_type: UnknownType | None,
          timestamp_unit: TimestampUnit | None = None):
    from behavior.adapters import load_dataset
    from behavior.policies import LoadPolicies

    kw: dict[str, Any] = {}
    if missing_item is not None:
        kw["missing_item"] = missing_item.value
    if unknown_type is not None:
        kw["unknown_type"] = unknown_type.value
    if timestamp_unit is not None:
        kw["timestamp_unit"] = timestamp_unit.value
    return load_dataset(dataset, LoadPolicies(**kw))


def _emit_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def _kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right")
    for k, v in rows:
        t.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    return t


_MISSING_OPT = typer.Option(None, "--missing-item", help="Behaviour whose item is not in the catalogue: "
                                                         "placeholder, drop (counted; default) or fail.")
_UNKNOWN_OPT = typer.Option(None, "--unknown-type", help="Unknown behaviour type: map (default; "
                                                         "unmapped ones dropped and counted), drop or fail.")
_TS_OPT = typer.Option(None, "--timestamp-unit", help="How timestamp columns are read: auto (default; detected "
                                                      "once per column), iso, s, ms or us (unix epoch).")


@data_app.command("stats")
def stats(
    dataset: str = typer.Option(None, "--dataset", "-d", help=DATASET_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
    missing_item: MissingItem = _MISSING_OPT,
    unknown_type: UnknownType = _UNKNOWN_OPT,
    timestamp_unit: TimestampUnit = _TS_OPT,
) -> None:
    """Users, items, behaviours, counts per type, time range, history lengths and the load report."""
    from behavior.stats import dataset_stats

    s = dataset_stats(_load(dataset, missing_item, unknown_type, timestamp_unit))
    if as_json:
        _emit_json(s)
        return
    console.print(_kv_table(f"dataset {s['dataset']}", [
        ("users", s["users"]), ("users with history", s["users_with_history"]), ("items", s["items"]),
        ("items with a behaviour", s["items_with_behavior"]), ("categories", s["categories"]),
        ("behaviours", s["behaviors"]),
        ("time range", f"{(s['time_range']['first'] or '')[:10]} .. {(s['time_range']['last'] or '')[:10]} "
                       f"({s['time_range']['days']} days)"),
    ]))
    t = Table(title="behaviours per type", title_justify="left")
    t.add_column("type")
    t.add_column("count", justify="right")
    t.add_column("share", justify="right")
    for k, v in s["behavior_counts"].items():
        t.add_row(k, f"{v:,}", f"{v / max(1, s['behaviors']):.1%}")
    console.print(t)
    hl = s["history_length"]
    if hl:
        t = Table(title="history length (behaviours per user)", title_justify="left")
        for k in hl:
            t.add_column(k, justify="right")
        t.add_row(*[str(v) for v in hl.values()])
        console.print(t)
    if s["reference_tags"]:
        rt = s["reference_tags"]
        console.print(_kv_table("reference tags (human-written)", [
            ("tags", rt["tags"]), ("users", rt["users"]), ("items", rt["items"]),
            ("distinct tags", rt["distinct_tags"])]))
    rep = s["load_report"]
    rows: list[tuple[str, Any]] = [("rows read", rep["rows_read"]), ("rows dropped", rep["dropped_total"])]
    rows += [(f"  dropped: {k}", v) for k, v in rep["dropped"].items()]
    if rep["placeholder_items"]:
        rows.append(("rows kept with a placeholder item", rep["placeholder_items"]))
    if rep["mapped_types"]:
        rows.append(("mapped types", ", ".join(f"{k} -> {v}" for k, v in rep["mapped_types"].items())))
    console.print(_kv_table("load report", rows))
    for note in rep["notes"]:
        console.print(f"[dim]note:[/] {note}")


@data_app.command("compress")
def compress(
    user: str = typer.Option(..., "--user", "-u", help="User id (as in the dataset)."),
    dataset: str = typer.Option(None, "--dataset", "-d", help=DATASET_HELP),
    budget: int = typer.Option(None, "--budget", "-b", min=0,
                               help="Token budget for the block (default 4096: half the local model's 8k context)."),
    now: str = typer.Option(None, "--now", help="Compress as of this date/time (ISO-8601); only earlier "
                                                "behaviours are used. Default: the dataset's last behaviour."),
    min_weight: float = typer.Option(None, "--min-weight", help="Behaviour-level filter: keep types with at "
                                                                "least this confidence (default 0.25)."),
    tokenizer: str = typer.Option(None, "--tokenizer", help="GGUF whose tokenizer counts tokens "
                                                            "(default: the embedded SmolLM2)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
    missing_item: MissingItem = _MISSING_OPT,
    unknown_type: UnknownType = _UNKNOWN_OPT,
    timestamp_unit: TimestampUnit = _TS_OPT,
) -> None:
    """A user's compressed behaviour context, with raw and compressed token counts."""
    from behavior.compress import CompressionConfig, compress_user
    from behavior.tokens import get_token_counter
    from core.options import parse_date

    when = parse_date(now, "--now")
    cfg_kw: dict[str, Any] = {}
    if budget is not None:
        cfg_kw["budget"] = budget
    if min_weight is not None:
        cfg_kw["min_weight"] = min_weight
    cfg = CompressionConfig(**cfg_kw)
    ds = _load(dataset, missing_item, unknown_type, timestamp_unit)
    if ds.report.dropped:
        n = sum(ds.report.dropped.values())
        err.print(f"[dim]note: loading dropped {n:,} row{'' if n == 1 else 's'} "
                  f"({', '.join(f'{k}: {v:,}' for k, v in ds.report.dropped.items())}); see data stats[/]")
    counter = get_token_counter(tokenizer)
    res = compress_user(ds, user, counter, cfg, now=when)
    if as_json:
        _emit_json({"dataset": ds.name, "tokenizer": counter.name, **res.model_dump(mode="json")})
        return
    st, sm = res.stats, res.summary
    console.print(Panel(res.text or "[dim](empty)[/]", title=f"user {user} as of {res.now:%Y-%m-%d %H:%M}",
                        title_align="left"))
    console.print(_kv_table(f"tokens ({counter.name})", [
        ("raw (one line per event)", st.raw_tokens),
        ("after behaviour-level filter", st.filtered_tokens),
        ("compressed (lossless block)", st.compressed_full_tokens),
        ("final block", st.compressed_tokens),
        ("budget", st.budget),
        ("reduction: behaviour level", f"{st.reduction_behavior_level:.1%}"),
        ("reduction: sequence level", f"{st.reduction_sequence_level:.1%}"),
        ("reduction: overall", f"{st.reduction_overall:.1%}"),
        ("within budget", "yes" if st.within_budget else "no (oldest / lowest-confidence entries dropped)"),
    ]))
    d = st.dropped_by_budget
    console.print(_kv_table("events and items", [
        ("events", st.events_total), ("kept by the behaviour filter", st.events_kept),
        ("shown in the block", st.events_retained),
        ("distinct items", st.distinct_items_total), ("kept by the behaviour filter ", st.distinct_items_kept),
        ("shown in the block ", st.distinct_items_retained),
        ("dropped for the budget: entries / events / items", f"{d.entries:,} / {d.events:,} / {d.items:,}"),
    ]))
    t = Table(title="summary for the agents", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("behaviours", ", ".join(f"{k} {v:,}" for k, v in sm.behavior_counts.items()))
    t.add_row("top categories", ", ".join(f"{c.category} ({c.count})" for c in sm.top_categories))
    ago = sm.days_since_last
    t.add_row("first / last", f"{sm.first_date} / {sm.last_date} ({ago} day{'' if ago == 1 else 's'} ago)")
    t.add_row(f"recent purchases ({len(sm.recent_purchases)})",
              ", ".join(f"{p.label} ({p.last_date:%m-%d})" for p in sm.recent_purchases[:15])
              + (" ..." if len(sm.recent_purchases) > 15 else ""))
    console.print(t)
