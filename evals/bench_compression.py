"""``app.py bench compression``: how well hierarchical behaviour compression does on a dataset.

Over a fixed-seed sample of users (``random.Random(seed).sample`` of the sorted user ids), each user's
whole history is compressed as of the dataset's clock (its last behaviour) and measured with the
configured tokenizer. Reported, every figure computed in the run:

* raw, filtered, compressed (the full lossless block) and final (budgeted) tokens: p50 / p95 / max;
* median reduction per stage (behaviour level, sequence level) and overall (see
  ``behavior.compress``: overall = 1 - lossless block / raw);
* share of users within the budget before (raw) and after (lossless block) compression, at the
  chosen budget and at two reference contexts: the embedded model's 8,192 tokens and RecGPT's
  131,072 (128k);
* share of distinct items retained (after the behaviour filter), over all sampled users and over
  those within budget (which must be 1.0: within budget compression is lossless at the item level),
  and whether any final block exceeded the budget (it must not);
* seconds per user (history look-up + compression + all token counting), plus load times.

The default budget is ``behavior.compress.DEFAULT_BUDGET`` (4,096): half of the 8k context of the
default local model, leaving the rest for instructions, user attributes, environment and output.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from behavior.compress import (
    DEFAULT_BUDGET,
    LOCAL_CONTEXT,
    RECGPT_CONTEXT,
    CompressionConfig,
    compress_user,
    dataset_now,
)
from core.errors import EmptyHistoryError

DEFAULT_USERS = 200
DEFAULT_SEED = 0


def _dist(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0, "p95": 0, "max": 0}
    a = np.asarray(values, dtype=float)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "max": float(a.max())}


def _share(flags: list[bool]) -> float:
    return float(np.mean(flags)) if flags else 0.0


def run_compression_bench(
    dataset: str | None = None,
    *,
    users: int = DEFAULT_USERS,
    budget: int = DEFAULT_BUDGET,
    seed: int = DEFAULT_SEED,
    config: CompressionConfig | None = None,
    count_tokens: Callable[[str], int] | None = None,
    tokenizer_name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    from behavior.adapters import load_dataset

    t0 = time.perf_counter()
    ds = load_dataset(dataset)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if count_tokens is None:
        from behavior.tokens import get_token_counter

        counter = get_token_counter()
        count_tokens, tokenizer_name = counter, counter.name
    tok_s = time.perf_counter() - t0
    cfg = (config or CompressionConfig()).model_copy(update={"budget": budget})
    now = dataset_now(ds)

    ids = sorted(ds.users["user_id"].to_list())
    sample = random.Random(seed).sample(ids, min(users, len(ids)))
    # build the per-user index once, outside the per-user timing
    t0 = time.perf_counter()
    if sample:
        ds.history(sample[0])
    index_s = time.perf_counter() - t0

    rows: list[dict[str, Any]] = []
    empty = 0
    for n, uid in enumerate(sample, 1):
        t = time.perf_counter()
        try:
            r = compress_user(ds, uid, count_tokens, cfg)
        except EmptyHistoryError:
            empty += 1
            continue
        secs = time.perf_counter() - t
        st = r.stats
        rows.append({
            "raw": st.raw_tokens, "filtered": st.filtered_tokens, "full": st.compressed_full_tokens,
            "final": st.compressed_tokens, "within": st.within_budget, "raw_within": st.raw_within_budget,
            "kept_items": st.distinct_items_kept, "retained_items": st.distinct_items_retained,
            "dropped_events": st.dropped_by_budget.events, "dropped_items": st.dropped_by_budget.items,
            "r_beh": st.reduction_behavior_level, "r_seq": st.reduction_sequence_level,
            "r_all": st.reduction_overall, "secs": secs,
        })
        if progress:
            progress(n, len(sample))

    within = [r for r in rows if r["within"]]

    def retained(rs: list[dict[str, Any]]) -> float | None:
        kept = sum(r["kept_items"] for r in rs)
        return sum(r["retained_items"] for r in rs) / kept if kept else None

    refs = {}
    for b in sorted({budget, LOCAL_CONTEXT, RECGPT_CONTEXT}):
        refs[str(b)] = {"before": _share([r["raw"] <= b for r in rows]),
                        "after": _share([r["full"] <= b for r in rows])}
    return {
        "dataset": ds.name,
        "tokenizer": tokenizer_name or getattr(count_tokens, "name", type(count_tokens).__name__),
        "users_sampled": len(sample),
        "users_measured": len(rows),
        "users_empty_history": empty,
        "seed": seed,
        "budget": budget,
        "now": now.isoformat(),
        "config": cfg.model_dump(mode="json", exclude={"weights"}),
        "raw_tokens": _dist([r["raw"] for r in rows]),
        "filtered_tokens": _dist([r["filtered"] for r in rows]),
        "compressed_tokens": _dist([r["full"] for r in rows]),
        "final_tokens": _dist([r["final"] for r in rows]),
        "reduction_median": {
            "behavior_level": float(np.median([r["r_beh"] for r in rows])) if rows else 0.0,
            "sequence_level": float(np.median([r["r_seq"] for r in rows])) if rows else 0.0,
            "overall": float(np.median([r["r_all"] for r in rows])) if rows else 0.0,
        },
        "within_budget": {"before": _share([r["raw_within"] for r in rows]),
                          "after": _share([r["within"] for r in rows])},
        "within_budget_at": refs,
        "items_retained": {
            "all_users": retained(rows),
            "within_budget_users": retained(within),
            "min_within_budget_user": min((r["retained_items"] / r["kept_items"] for r in within
                                           if r["kept_items"]), default=None),
        },
        "budget_drops": {
            "users_over_budget": len(rows) - len(within),
            "events_dropped": sum(r["dropped_events"] for r in rows),
            "items_dropped": sum(r["dropped_items"] for r in rows),
            "any_final_over_budget": any(r["final"] > budget for r in rows),
        },
        "seconds_per_user": {"mean": float(np.mean([r["secs"] for r in rows])) if rows else 0.0,
                             **_dist([r["secs"] for r in rows])},
        "seconds": {"load": round(load_s, 3), "tokenizer_load": round(tok_s, 3), "index": round(index_s, 3),
                    "users_total": round(sum(r["secs"] for r in rows), 3)},
    }


def print_report(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console()
    c.print(f"[bold]compression on {res['dataset']}[/]: {res['users_measured']} users (seed {res['seed']}), "
            f"budget {res['budget']:,} tokens, tokenizer {res['tokenizer']}, as of {res['now'][:10]}")
    t = Table()
    t.add_column("tokens")
    for k in ("p50", "p95", "max"):
        t.add_column(k, justify="right")
    for name, key in (("raw", "raw_tokens"), ("after behaviour filter", "filtered_tokens"),
                      ("compressed (lossless)", "compressed_tokens"), ("final (budgeted)", "final_tokens")):
        t.add_row(name, *[f"{res[key][k]:,.0f}" for k in ("p50", "p95", "max")])
    c.print(t)
    t = Table(show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    rm = res["reduction_median"]
    t.add_row("median reduction: behaviour level", f"{rm['behavior_level']:.1%}")
    t.add_row("median reduction: sequence level", f"{rm['sequence_level']:.1%}")
    t.add_row("median reduction: overall", f"{rm['overall']:.1%}")
    for b, v in res["within_budget_at"].items():
        t.add_row(f"within {int(b):,} tokens: before / after", f"{v['before']:.1%} / {v['after']:.1%}")
    ir = res["items_retained"]
    for name, v in (("all users", ir["all_users"]), ("users within budget", ir["within_budget_users"])):
        t.add_row(f"distinct items retained: {name}", "n/a" if v is None else f"{v:.1%}")
    bd = res["budget_drops"]
    t.add_row("over budget: users / events / items dropped",
              f"{bd['users_over_budget']} / {bd['events_dropped']:,} / {bd['items_dropped']:,}")
    t.add_row("any final block over budget", "yes" if bd["any_final_over_budget"] else "no")
    sp = res["seconds_per_user"]
    t.add_row("seconds per user: mean / p50 / max", f"{sp['mean']:.3f} / {sp['p50']:.3f} / {sp['max']:.3f}")
    c.print(t)
