"""Self-contained HTML for logged runs: one page per run (``serve``'s ``/runs/{id}/view``) and one
report for several runs (``app.py demo``).

What a run section shows: user, run id, status, times and wall time; the context used (models,
prompt versions, sizes); the personas; the chosen tags with their grade; the recommended items
(item, title, category, tag, persona, score, explanation, grade); every judge verdict per
dimension, per verdict set and judge pass; the drops; a timeline of every task (nodes and subgraph
nodes) with start offset, latency and tokens drawn as CSS bars; the model calls. Errors, failed
calls and B grades are highlighted.

Design decisions
----------------

* **Escaping.** Templates are rendered by a Jinja2 environment with autoescaping on for every
  template (``select_autoescape`` with ``default=True``), and no template marks a data value
  ``|safe``: titles, explanations, personas, tags, errors and the caller's ``extra`` all reach the
  page as text. A title ``<script>alert(1)</script>`` shows as that text. CSS class names built
  from data (grades, statuses, outcomes) come from fixed whitelists, and the bar geometry is
  numbers computed here.
* **Self-contained.** Inline CSS, no JavaScript, no external asset (no CDN, no web font, no
  image). Each page carries a Content-Security-Policy ``<meta>`` that allows nothing but inline
  styles, so even a value that escaped escaping could not run a script or fetch anything.
* **Templates are code.** They are loaded from this package's ``templates/`` folder only
  (``PackageLoader``), never from a path a user gives.
* **Where the data comes from.** ``runlog.trace.build_trace`` (tasks as a tree, calls, verdict
  sets with their judgements, recommendations). Personas and tags come from the run's output
  summary; for a run without one (``incomplete``: the process died) they are taken from the last
  top-level task result that holds them.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from runlog.store import FINAL_OK, RunLog
from runlog.trace import build_trace

GRADES = ("S", "A", "B")
OUTCOMES = ("good", "ok", "defect")
STATUS_CLASS = {"ok": "ok", "empty": "warn", "running": "info", "incomplete": "bad", "error": "bad",
                "cancelled": "warn", "interrupted": "warn"}
MIN_BAR_PCT = 0.4


@functools.lru_cache(1)
def environment() -> Environment:
    """The Jinja2 environment: this package's templates, autoescaping always on."""
    env = Environment(loader=PackageLoader("report", "templates"),
                      autoescape=select_autoescape(enabled_extensions=("html", "htm", "j2"), default_for_string=True,
                                                   default=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["secs"] = fmt_secs
    env.filters["when"] = fmt_when
    env.filters["num"] = fmt_num
    env.filters["text"] = fmt_value
    return env


# ------------------------------------------------------------------------------------------------
# public API

def render_run_page(store: RunLog, run_id: str) -> str:
    """One run as a full HTML page. ``run_id`` may be a unique prefix (``RunLog.resolve``)."""
    run = run_view(store, run_id)
    return environment().get_template("run.html.j2").render(
        title=f"IntentRec run {run['run_id']} — user {run['user_id']}", run=run, generated=_now())


def render_report(store: RunLog, run_ids: list[str], *, title: str, extra: dict[str, Any] | None = None) -> str:
    """Several runs on one page (e.g. a demo of three users).

    ``extra`` (optional): ``{"meta": {label: value, ...}, "users": {user_id: {"history": {...},
    "future": {...}, ...}}}``. ``meta`` is shown as a table at the top; each user's entries are shown
    in that user's run section (``history``: e.g. the compressed-history brief; ``future``: a
    ``commands.demo.future_check`` result, which also adds a "bought afterwards" column to the items).
    Every value is escaped like any other data.
    """
    extra = extra or {}
    users_extra = extra.get("users") or {}
    runs = []
    for rid in run_ids:
        view = run_view(store, rid)
        view["extra"] = user_extra(users_extra.get(str(view["user_id"])) or {}, view["recommendations"])
        runs.append(view)
    covered = {str(r["user_id"]) for r in runs}
    no_run = [{"user_id": str(uid), "extra": user_extra(v or {}, [])}
              for uid, v in users_extra.items() if str(uid) not in covered]
    summary = [{"user_id": r["user_id"], "run_id": r["run_id"], "status": r["status"],
                "status_class": r["status_class"], "wall_s": r["wall_s"], "n_recs": len(r["recommendations"]),
                "n_b": r["stats"]["b_grades"], "errors": r["stats"]["errors"]} for r in runs]
    return environment().get_template("report.html.j2").render(
        title=title, runs=runs, summary=summary, no_run=no_run, meta=_pairs(extra.get("meta") or {}),
        generated=_now())


def write_report(path: str | Path, html: str) -> Path:
    """Write ``html`` to ``path`` (UTF-8, parent folders created, atomically: a reader never sees half
    a page); returns the path. The file gets the usual permissions (the umask applies)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(html)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# ------------------------------------------------------------------------------------------------
# view model: plain dicts with every key the templates use

def run_view(store: RunLog, run_id: str) -> dict[str, Any]:
    trace = build_trace(store, run_id)
    run = trace["run"]
    rid = run["run_id"]
    output = run.get("output") or {}
    top_results = [t["result"] for t in trace["tree"] if isinstance(t.get("result"), dict)]
    personas = output.get("personas") or _last(top_results, "personas") or []
    tags = output.get("tags") or _last(top_results, "tags") or []
    drops = output.get("drops")
    if drops is None:
        drops = [d for r in top_results for d in (r.get("drops") or []) if isinstance(d, dict)]
    ctx = run.get("context") or {}
    request = run.get("request") or {}
    timeline, span = _timeline(trace["tree"], run)
    return {
        "run_id": rid, "user_id": str(run.get("user_id") or ""), "kind": run.get("kind") or "",
        "dataset": run.get("dataset") or "", "status": run.get("status") or "",
        "status_class": status_class(run.get("status")), "ok": run.get("status") in FINAL_OK,
        "started_at": run.get("started_at"), "ended_at": run.get("ended_at"), "wall_s": run.get("wall_s"),
        "parent_run_id": run.get("parent_run_id"), "error": run.get("error"), "error_node": run.get("error_node"),
        "fallback": output.get("fallback"), "now": _day(request.get("now")),
        "overrides": _pairs(request.get("overrides") or {}),
        "fork": _pairs(run.get("fork") or {}),
        "models": _pairs({role: m for role, m in (ctx.get("models") or {}).items() if m}),
        "prompts": [{"name": name, "version": ref.get("version"), "sha": str(ref.get("sha256") or "")[:12]}
                    for name, ref in sorted((ctx.get("prompts") or {}).items()) if isinstance(ref, dict)],
        "settings": _pairs(ctx.get("settings") or {}),
        "personas": [_persona(p) for p in personas if isinstance(p, dict)],
        "tags": [_tag(t) for t in tags if isinstance(t, dict)],
        "recommendations": [_rec(i, r) for i, r in enumerate(trace["recommendations"], start=1)],
        "verdict_sets": [_verdict_set(s) for s in trace["verdict_sets"]],
        "drops": [{"stage": str(d.get("stage") or ""), "subject": str(d.get("subject") or ""),
                   "reason": str(d.get("reason") or "")} for d in drops if isinstance(d, dict)],
        "timeline": timeline, "span_s": span,
        "calls": [_call(c) for c in trace["calls"]],
        "stats": trace["stats"],
        "children": [{"run_id": c["run_id"], "kind": c["kind"], "status": c["status"],
                      "status_class": status_class(c["status"])} for c in trace["children"]],
        "extra": user_extra({}, []),
    }


def user_extra(entry: dict[str, Any], recs: list[dict[str, Any]]) -> dict[str, Any]:
    """A user's ``extra`` entry for the templates: ``history`` and ``future`` as label/value pairs,
    any other key as its own table, and the future check merged into the recommendations."""
    history = entry.get("history") or {}
    future = entry.get("future") or {}
    window = future.get("window_days") if isinstance(future, dict) else None
    per_item = (future.get("items") or {}) if isinstance(future, dict) else {}
    for r in recs:
        f = per_item.get(r["item_id"]) if isinstance(per_item, dict) else None
        if isinstance(f, dict):
            r["future"] = ("item bought" if f.get("bought_item") else
                           "category bought" if f.get("bought_category") else "no")
            r["future_class"] = "ok" if f.get("bought_item") else "info" if f.get("bought_category") else ""
    other = {k: v for k, v in entry.items() if k not in ("history", "future")}
    return {
        "history": _pairs(history) if isinstance(history, dict) else [("history", fmt_value(history))],
        "future": _pairs({k: v for k, v in future.items() if k != "items"}) if isinstance(future, dict) else [],
        "future_window": window if isinstance(per_item, dict) and per_item else None,
        "other": _pairs(other),
    }


def status_class(status: Any) -> str:
    return STATUS_CLASS.get(str(status or "").split(":")[0], "info")


def _last(results: list[dict[str, Any]], key: str) -> Any:
    for r in reversed(results):
        if r.get(key):
            return r[key]
    return None


def _grade(g: Any) -> tuple[str, str]:
    g = "" if g is None else str(g)
    return g, (f"grade-{g}" if g in GRADES else "grade-none")


def _persona(p: dict[str, Any]) -> dict[str, Any]:
    return {"name": str(p.get("name") or ""), "focus": str(p.get("focus") or ""),
            "evidence": str(p.get("evidence") or "")}


def _tag(t: dict[str, Any]) -> dict[str, Any]:
    grade, cls = _grade(t.get("grade"))
    return {"tag": str(t.get("tag") or ""), "persona": str(t.get("persona") or ""),
            "intent": str(t.get("intent") or ""), "reason": str(t.get("reason") or ""),
            "grade": grade, "grade_class": cls}


def _rec(rank: int, r: dict[str, Any]) -> dict[str, Any]:
    grade, cls = _grade(r.get("grade"))
    dims = r.get("dimensions") if isinstance(r.get("dimensions"), dict) else {}
    score = r.get("score")
    return {"rank": rank, "item_id": str(r.get("item_id") or ""), "title": str(r.get("title") or ""),
            "category": str(r.get("category") or ""), "tag": str(r.get("tag") or ""),
            "persona": str(r.get("persona") or ""), "score": score if isinstance(score, int | float) else None,
            "explanation": str(r.get("explanation") or ""), "grade": grade, "grade_class": cls,
            "tag_grade": str(r.get("tag_grade") or ""),
            "defects": [str(d) for d, o in dims.items() if o == "defect"],
            "future": None, "future_class": ""}


def _verdict_set(s: dict[str, Any]) -> dict[str, Any]:
    """A verdict set as one table per subject kind, a column per dimension (in order of first use)."""
    groups: dict[str, dict[str, Any]] = {}
    for j in s.get("judgements") or []:
        verdict = j.get("verdict") or {}
        request = j.get("request") or {}
        kind = str(j.get("kind") or verdict.get("kind") or request.get("kind") or "?")
        g = groups.setdefault(kind, {"kind": kind, "dimensions": [], "rows": []})
        cells: dict[str, dict[str, str]] = {}
        for d in verdict.get("dimensions") or []:
            if not isinstance(d, dict):
                continue
            name = str(d.get("dimension") or "?")
            if name not in g["dimensions"]:
                g["dimensions"].append(name)
            outcome = str(d.get("outcome") or "")
            cells[name] = {"outcome": outcome, "reason": str(d.get("reason") or ""),
                           "source": str(d.get("source") or "") + (" (fallback)" if d.get("fallback") else ""),
                           "class": f"out-{outcome}" if outcome in OUTCOMES else "out-none"}
        item = request.get("item") if isinstance(request.get("item"), dict) else {}
        subject = str(request.get("text") or "") if kind == "tag" else str(item.get("title") or "")
        grade, cls = _grade(j.get("grade") or verdict.get("grade"))
        g["rows"].append({"pass_no": j.get("pass_no"), "node": str(j.get("node") or ""),
                          "subject_id": str(j.get("subject_id") or ""), "subject": subject,
                          "text": str(request.get("text") or "") if kind != "tag" else "",
                          "grade": grade, "grade_class": cls, "cells": cells})
    for g in groups.values():
        for row in g["rows"]:
            row["cells"] = [row["cells"].get(d, {"outcome": "", "reason": "", "source": "", "class": "out-none"})
                            for d in g["dimensions"]]
    return {"set_id": s.get("set_id"), "source": str(s.get("source") or ""),
            "judge_model": str(s.get("judge_model") or ""), "mode": str(s.get("mode") or ""),
            "threshold": s.get("threshold"), "created_at": s.get("created_at"),
            "parent_set_id": s.get("parent_set_id"), "groups": list(groups.values()),
            "n": sum(len(g["rows"]) for g in groups.values()),
            "n_b": sum(1 for g in groups.values() for r in g["rows"] if r["grade"] == "B")}


def _timeline(tree: list[dict[str, Any]], run: dict[str, Any]) -> tuple[list[dict[str, Any]], float]:
    """Every task (depth-first, the order they started) with its offset from the run's start."""
    t0 = _parse(run.get("started_at"))
    rows: list[dict[str, Any]] = []

    def walk(nodes: Iterable[dict[str, Any]], depth: int) -> None:
        for n in nodes:
            start = _parse(n.get("started_at"))
            offset = (start - t0).total_seconds() if start is not None and t0 is not None else None
            errors = [_clip(e) for e in n.get("call_errors") or []]  # in full in the calls table
            if n.get("error"):
                errors.insert(0, _clip(n["error"]))
            grades = list((n.get("grades") or {}).values())
            rows.append({"task_id": n.get("task_id"), "node": str(n.get("node") or ""),
                         "label": str(n.get("label") or ""), "depth": depth, "offset": offset,
                         "wall_s": n.get("wall_s"), "calls": n.get("calls") or 0, "tokens": n.get("tokens") or 0,
                         "attempts": n.get("attempts") or 0, "subgraph": bool(n.get("children")),
                         "finished": bool(n.get("finished")), "errors": errors,
                         "n_b": grades.count("B"), "grades": ", ".join(f"{grades.count(g)} {g}" for g in GRADES
                                                                        if g in grades)})
            walk(n.get("children") or [], depth + 1)

    walk(tree, 0)
    ends = [r["offset"] + (r["wall_s"] or 0) for r in rows if r["offset"] is not None]
    span = max([float(run.get("wall_s") or 0.0), *ends, 1e-6])
    for r in rows:
        if r["offset"] is None:
            r["left"] = r["width"] = None
            continue
        left = min(max(r["offset"] / span * 100, 0.0), 100.0 - MIN_BAR_PCT)
        width = max((r["wall_s"] or 0.0) / span * 100, MIN_BAR_PCT)
        r["left"], r["width"] = round(left, 3), round(min(width, 100.0 - left), 3)
    return rows, span


def _call(c: dict[str, Any]) -> dict[str, Any]:
    prompt = c.get("prompt_name") or ""
    if prompt and c.get("prompt_version") is not None:
        prompt += f" v{c['prompt_version']}"
    return {"call_id": c.get("call_id"), "node": str(c.get("node") or ""), "subject": str(c.get("subject") or ""),
            "prompt": prompt, "model": str(c.get("model") or ""), "attempts": c.get("attempts"),
            "prompt_tokens": c.get("prompt_tokens"), "completion_tokens": c.get("completion_tokens"),
            "latency_s": c.get("latency_s"), "error": str(c["error"]) if c.get("error") else "",
            "retried": int(c.get("attempts") or 0) > 1}


def _pairs(d: dict[str, Any]) -> list[tuple[str, str]]:
    return [(str(k).replace("_", " "), fmt_value(v)) for k, v in d.items()]


def _parse(ts: Any) -> datetime | None:
    if not ts:
        return None
    try:
        dt = datetime.fromisoformat(str(ts))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _clip(v: Any, n: int = 300) -> str:
    s = str(v)
    return s if len(s) <= n else s[: n - 1] + "…"


def _day(ts: Any) -> str | None:
    """``2017-10-01T00:00:00`` → ``2017-10-01``; other values as they are."""
    return str(ts).removesuffix("T00:00:00") if ts else None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# ------------------------------------------------------------------------------------------------
# filters (return plain text; the environment escapes it)

def fmt_secs(v: Any) -> str:
    if v is None:
        return "–"
    v = float(v)
    if v < 1:
        return f"{v * 1000:.1f} ms"
    return f"{v:.2f} s"


def fmt_when(ts: Any) -> str:
    dt = _parse(ts)
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if dt else "–"


def fmt_num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def fmt_value(v: Any) -> str:
    """Any JSON-ish value as one line of text."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1 else f"{v:,.2f}".rstrip("0").rstrip(".")
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, list | tuple):
        return ", ".join(fmt_value(x) for x in v) or "–"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {fmt_value(x)}" for k, x in v.items()) or "–"
    if isinstance(v, str):
        return v
    try:
        return json.dumps(v, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(v)
