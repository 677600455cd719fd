"""A logged run as a trace: a tree of tasks (graph → nodes → subgraph nodes) with latency, tokens and
attempts, the model calls with their rendered prompts, the verdicts and the recommendations.

``build_trace(store, run_id)`` returns the whole trace as JSON-able dicts (``trace --json``);
``render_tree`` draws it with rich (B grades and errors in red, retried calls in yellow);
``node_calls`` / ``render_node`` give one node's calls: rendered prompt, raw output, parsed output.
A node name matches the calls made by that node (``explain``, ``joint_evaluator``) and, for a
subgraph node (``judge_tags``), the calls made inside it.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.text import Text
from rich.tree import Tree

from runlog.store import RunLog, RunLogError

GRADE_STYLE = {"S": "green", "A": "yellow", "B": "bold red"}
STATUS_STYLE = {"ok": "green", "empty": "yellow", "running": "cyan", "incomplete": "bold red", "error": "bold red",
                "cancelled": "yellow", "interrupted": "yellow"}


def _tokens(c: dict[str, Any]) -> int:
    return int(c.get("prompt_tokens") or 0) + int(c.get("completion_tokens") or 0)


def _grades(result: Any) -> dict[str, str]:
    if not isinstance(result, dict) or not isinstance(result.get("verdicts"), dict):
        return {}
    return {sid: (v or {}).get("grade", "?") for sid, v in result["verdicts"].items() if isinstance(v, dict)}


def _label(task: dict[str, Any], calls: list[dict[str, Any]]) -> str:
    for c in calls:
        if c.get("subject"):
            return str(c["subject"])
    inp = task.get("input")
    if isinstance(inp, dict):
        if isinstance(inp.get("persona"), dict):
            return str(inp["persona"].get("name", ""))
        if isinstance(inp.get("item"), dict):
            return str(inp["item"].get("item_id", ""))
        if isinstance(inp.get("request"), dict):
            return str(inp["request"].get("subject_id", ""))
    return ""


def build_trace(store: RunLog, run_id: str) -> dict[str, Any]:
    run = store.get_run(run_id)
    rid = run["run_id"]
    tasks = store.tasks(rid)
    calls = store.calls(rid)
    by_task: dict[str, list[dict[str, Any]]] = {}
    for c in calls:
        by_task.setdefault(c.get("task_id") or "", []).append(c)
    nodes: dict[str, dict[str, Any]] = {}
    for t in tasks:
        own = by_task.get(t["task_id"], [])
        nodes[t["task_id"]] = {
            "task_id": t["task_id"], "node": t["node"], "namespace": t["namespace"], "label": _label(t, own),
            "started_at": t["started_at"], "wall_s": t["wall_s"], "error": t["error"],
            "calls": len(own), "tokens": sum(_tokens(c) for c in own),
            "attempts": sum(int(c.get("attempts") or 0) for c in own),
            "call_errors": [c["error"] for c in own if c.get("error")],
            "call_ids": [c["call_id"] for c in own], "grades": _grades(t["result"]),
            "finished": t["ended_at"] is not None, "input_ref": t["input_ref"], "input": t["input"],
            "result": t["result"], "children": [],
        }
    roots: list[dict[str, Any]] = []
    for t in tasks:
        n = nodes[t["task_id"]]
        parent = nodes.get(t["parent_task_id"] or "")
        (parent["children"] if parent else roots).append(n)

    def roll(n: dict[str, Any]) -> None:
        for ch in n["children"]:
            roll(ch)
            for k in ("calls", "tokens", "attempts"):
                n[k] += ch[k]
    for r in roots:
        roll(r)
    # calls outside any task (a judge replay): one leaf per call
    for c in by_task.get("", []):
        roots.append({"task_id": None, "node": c["node"], "namespace": "", "label": c.get("subject") or "",
                      "wall_s": c.get("latency_s"), "error": None, "calls": 1, "tokens": _tokens(c),
                      "attempts": int(c.get("attempts") or 0), "call_errors": [c["error"]] if c.get("error") else [],
                      "call_ids": [c["call_id"]], "grades": {}, "finished": True, "children": []})
    sets = []
    for s in store.verdict_sets(rid) + [s for s in store.verdict_sets(source="replay")
                                        if s["producer_run_id"] == rid and s["run_id"] != rid]:
        sets.append({**s, "judgements": store.judgements(s["set_id"])})
    children = [{"run_id": r["run_id"], "kind": r["kind"], "status": r["status"], "fork": r["fork"]}
                for r in store.runs(parent=rid)]
    stats = {"tasks": len(tasks), "calls": len(calls), "tokens": sum(_tokens(c) for c in calls),
             "attempts": sum(int(c.get("attempts") or 0) for c in calls),
             "errors": sum(1 for t in tasks if t["error"]) + sum(1 for c in calls if c.get("error")),
             "b_grades": sum(1 for s in sets if s["source"] == "graph" for j in s["judgements"] if j["grade"] == "B")}
    return {"run": run, "stats": stats, "tree": roots, "calls": calls, "verdict_sets": sets,
            "recommendations": store.recommendations(rid), "children": children}


# ------------------------------------------------------------------------------------------------
# rendering

def _status(status: str) -> str:
    return f"[{STATUS_STYLE.get(status.split(':')[0], 'white')}]{escape(status)}[/]"


def _task_label(n: dict[str, Any]) -> str:
    name = f"[bold]{escape(n['node'])}[/]"
    if n["label"]:
        name += f" [dim]\\[{escape(n['label'][:48])}][/]"
    if n["children"]:
        name += " [dim](subgraph)[/]"
    parts = [f"{n['wall_s']:.3f} s" if n.get("wall_s") is not None else "[bold red]unfinished[/]"]
    if n["calls"]:
        parts.append(f"{n['calls']} call{'s' if n['calls'] != 1 else ''}")
        parts.append(f"{n['tokens']} tok")
        style = "yellow" if n["attempts"] > n["calls"] else "dim"
        parts.append(f"[{style}]{n['attempts']} attempt{'s' if n['attempts'] != 1 else ''}[/]")
    grades = list(n["grades"].values())
    if grades:
        summary = ", ".join(f"[{GRADE_STYLE.get(g, 'white')}]{grades.count(g)} {g}[/]" for g in ("S", "A", "B")
                            if g in grades)
        parts.append(f"verdicts: {summary}")
    text = f"{name}  " + " · ".join(parts)
    if n.get("error"):
        text += f"  [bold red]✗ {escape(str(n['error'])[:200])}[/]"
    return text


def _add(tree: Tree, n: dict[str, Any]) -> None:
    br = tree.add(_task_label(n))
    for err in n["call_errors"]:
        br.add(f"[bold red]✗ call error: {escape(str(err)[:200])}[/]")
    if not n["children"]:
        for sid, g in n["grades"].items():
            if g == "B":
                br.add(f"[bold red]B[/] {escape(sid)}")
    for ch in n["children"]:
        _add(br, ch)


def render_tree(trace: dict[str, Any]) -> Tree:
    run, st = trace["run"], trace["stats"]
    wall = f"{run['wall_s']:.2f} s" if run.get("wall_s") is not None else "–"
    head = (f"[bold]run {run['run_id']}[/] · {run['kind']} · user {escape(str(run.get('user_id')))} · "
            f"{_status(run['status'])} · {wall} · {st['calls']} calls · {st['tokens']} tok")
    tree = Tree(head)
    ctx = run.get("context") or {}
    if ctx.get("models"):
        models = ", ".join(sorted({str(m) for m in ctx["models"].values() if m}))
        prompts = ", ".join(f"{n} v{r.get('version')} #{str(r.get('sha256'))[:8]}"
                            for n, r in sorted((ctx.get("prompts") or {}).items()))
        tree.add(f"[dim]models: {escape(models)} · prompts: {escape(prompts)}[/]")
    if run.get("fork"):
        f = run["fork"]
        tree.add(f"[magenta]fork of run {f.get('from_run_id')} at {escape(str(f.get('node')))} "
                 f"(edit: {escape(', '.join(f.get('edit') or {}) or '-')}; {f.get('method')})[/]")
    if run.get("kind") == "replay" and run.get("parent_run_id"):
        tree.add(f"[magenta]judge replay of run {run['parent_run_id']}[/]")
    if run.get("error"):
        where = f" in node {run['error_node']}" if run.get("error_node") else ""
        tree.add(f"[bold red]✗ error{where}: {escape(str(run['error'])[:300])}[/]")
    graph = tree.add("[bold]graph[/]" if run.get("kind") != "replay" else "[bold]judge calls[/]")
    for n in trace["tree"]:
        _add(graph, n)
    recs = trace["recommendations"]
    if recs:
        rb = tree.add(f"[bold]{len(recs)} recommendations[/]")
        for r in recs:
            g = r.get("grade", "?")
            rb.add(f"[{GRADE_STYLE.get(g, 'white')}]{g}[/] {escape(str(r.get('item_id')))} "
                   f"{escape(str(r.get('title'))[:40])} [dim]— {escape(str(r.get('explanation'))[:80])}[/]")
    for ch in trace["children"]:
        tree.add(f"[magenta]→ {ch['kind']} run {ch['run_id']} ({ch['status']})[/]")
    return tree


def node_calls(trace: dict[str, Any], node: str, subject: str | None = None) -> list[dict[str, Any]]:
    """Calls made by ``node`` or inside a subgraph node called ``node``; unknown names are an error."""
    inside = [t for t in _walk(trace["tree"]) if t["node"] == node]
    ids = {cid for t in inside for n in _walk([t]) for cid in n["call_ids"]}
    out = [c for c in trace["calls"] if c["node"] == node or c["call_id"] in ids]
    if subject is not None:
        out = [c for c in out if subject in str(c.get("subject") or "")]
    if not out and not inside:
        known = sorted({t["node"] for t in _walk(trace["tree"])} | {c["node"] for c in trace["calls"] if c["node"]})
        raise RunLogError(f"no node {node!r} in run {trace['run']['run_id']}; nodes: {', '.join(known)}")
    return out


def _walk(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for n in nodes:
        out.append(n)
        out += _walk(n["children"])
    return out


def render_node(console: Console, trace: dict[str, Any], node: str, subject: str | None = None) -> int:
    calls = node_calls(trace, node, subject)
    if not calls:
        for t in (t for t in _walk(trace["tree"]) if t["node"] == node):
            console.print(Text(f"── {node} (no model calls) · task {t['task_id']} · input {t.get('input_ref')}",
                               style="bold"))
            console.print(Text(json.dumps(t.get("result"), indent=2, ensure_ascii=False)))
        return 0
    for c in calls:
        tok = _tokens(c)
        head = (f"── {c['node']} [{c.get('subject') or '-'}] · prompt {c.get('prompt_name')} v{c.get('prompt_version')} "
                f"#{(c.get('prompt_sha256') or '')[:8]} · model {c.get('model')} · {c.get('attempts')} attempt(s) · "
                f"{tok} tok · {c.get('latency_s')} s")
        console.print(Text(head, style="bold red" if c.get("error") else "bold cyan"))
        if c.get("prompt_path"):
            console.print(Text(f"   template file: {c['prompt_path']}", style="dim"))
        for m in c.get("messages") or []:
            console.print(Group(Text(f"[{m.get('role')}]", style="bold"), Text(str(m.get("content")))))
        console.print(Text("[raw output]", style="bold"))
        console.print(Text(str(c.get("raw") if c.get("raw") is not None else "(none)")))
        console.print(Text("[parsed output]", style="bold"))
        console.print(Text(json.dumps(c.get("parsed"), indent=2, ensure_ascii=False)))
        if c.get("error"):
            console.print(Text(f"[error] {c['error']}", style="bold red"))
        console.print()
    return len(calls)
