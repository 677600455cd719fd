"""What a set of logged runs cost: model calls (parsed, failed, retried), tokens, run statuses and wall
times, read back from the run log. Shared by ``eval tags-compare`` and ``bench system``."""
from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any


def _round(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(x, nd)


#: how many distinct failed-call messages ``call_stats`` reports, most frequent first
ERROR_KINDS = 5


def error_head(error: str, width: int = 160) -> str:
    """A failed call's message cut to its first line, so that equal failures count together."""
    lines = str(error).strip().splitlines()
    first = lines[0] if lines else "(empty error)"
    return first if len(first) <= width else first[:width - 1] + "…"


def call_stats(store: Any, run_ids: Sequence[str]) -> dict[str, Any]:
    """The model calls of ``run_ids`` from the run log: structured calls that parsed, failed calls,
    calls that needed a retry, the most frequent failure messages per node, tokens, the runs'
    statuses (``ok:fallback`` marks a run that used a documented fallback, e.g. category personas after the planner failed) and wall times."""
    n = failed = unparsed = retried = gen = prompt = 0
    walls, starts, ends = [], [], []
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for rid in run_ids:
        run = store.get_run(rid)
        statuses[run["status"]] += 1
        if run.get("wall_s") is not None:
            walls.append(float(run["wall_s"]))
        if run.get("started_at") and run.get("ended_at"):
            starts.append(datetime.fromisoformat(run["started_at"]))
            ends.append(datetime.fromisoformat(run["ended_at"]))
        for c in store.calls(rid):
            n += 1
            if c.get("error"):
                failed += 1
                errors[f"{c.get('node')}: {error_head(c['error'])}"] += 1
            unparsed += not c.get("error") and c.get("parsed") is None
            retried += (c.get("attempts") or 1) > 1
            gen += c.get("completion_tokens") or 0
            prompt += c.get("prompt_tokens") or 0
    span = (max(ends) - min(starts)).total_seconds() if starts else None
    return {"runs": len(run_ids), "run_status": dict(statuses), "calls": n, "failed_calls": failed, "unparsed_calls": unparsed, "retried_calls": retried,
            "valid_share": _round((n - failed - unparsed) / n) if n else None,
            "completion_tokens_per_user": _round(gen / len(run_ids), 1) if run_ids else None,
            "prompt_tokens_per_user": _round(prompt / len(run_ids), 1) if run_ids else None,
            "wall_s_median": _round(statistics.median(walls), 1) if walls else None,
            "wall_s_max": _round(max(walls), 1) if walls else None,
            "span_s": _round(span, 1), "users_per_min": _round(len(run_ids) / span * 60, 3) if span else None,
            "errors": dict(errors.most_common(ERROR_KINDS))}


def percentile(xs: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default); None for no data."""
    import numpy as np

    xs = [float(x) for x in xs if x is not None]
    return float(np.percentile(xs, q)) if xs else None


def spread(xs: Sequence[float], nd: int = 4) -> dict[str, Any]:
    """n, median, p95, min and max of the values that are not None (None figures when there are none)."""
    xs = [float(x) for x in xs if x is not None]
    if not xs:
        return {"n": 0, "median": None, "p95": None, "min": None, "max": None}
    return {"n": len(xs), "median": _round(statistics.median(xs), nd), "p95": _round(percentile(xs, 95), nd),
            "min": _round(min(xs), nd), "max": _round(max(xs), nd)}
