"""`app.py recommend` (the whole graph for one user, as a table or JSON) and `app.py demo` (the main
job: see ``commands/demo.py``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llm.cli_options import BACKEND_OPT, BASE_URL_OPT, MODEL_OPT, llm_overrides
from runlog.cli_options import RUNLOG_OPT

console = Console()


def _jsonable(o: Any) -> Any:
    if hasattr(o, "model_dump"):
        return o.model_dump()
    return str(o)


def collect(updates: Any, on_node: Any = None) -> dict[str, Any]:
    """Fold ``IntentRec.stream`` updates into the run's output (emit's values plus run id, personas,
    tags and fallback), calling ``on_node("path/of/node")`` for every node update seen."""
    final: dict[str, Any] = {}
    for ns, update in updates:
        for node, val in update.items():
            if on_node:
                on_node("/".join([*(n.split(":")[0] for n in ns), node]))
            if node == "emit" and not ns and isinstance(val, dict):
                final.update(val)
            elif not ns and isinstance(val, dict):
                for k in ("run_id", "personas", "tags", "fallback"):
                    if k in val:
                        final[k] = val[k]
    return final


def recommend_cmd(
    user: str = typer.Option(..., "--user", "-u", help="User id, as in the dataset."),
    dataset: str = typer.Option(None, "--dataset", "-d", help="Dataset spec (default completejourney)."),
    backend: str = BACKEND_OPT,
    base_url: str = BASE_URL_OPT,
    model: str = MODEL_OPT,
    now: str = typer.Option(None, "--now", help="Environment date (YYYY-MM-DD); history after it is hidden."),
    index_cutoff: str = typer.Option(
        None, "--index-cutoff", help="Use towers and index trained only on behaviours before YYYY-MM-DD (built "
        "and cached on first use; the offline evaluation's build for 2017-10-01 is reused). Default: all data."),
    prompts: str = typer.Option(None, "--prompts", help="Prompt override folder."),
    personas: int = typer.Option(None, "--personas", help="K personas."),
    tags: int = typer.Option(None, "--tags", help="N final tags."),
    items: int = typer.Option(None, "--items", help="Items to recommend."),
    judge_mode: str = typer.Option(None, "--judge-mode", help="joint (default) or per_dimension."),
    set_pairs: list[str] = typer.Option(None, "--set", help="A Context setting, KEY=VALUE (repeatable), e.g. "
                                       "history_budget=500; see agents/context.py."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Run planner → experts → arbiter → retrieval → explainer → judges for one user."""
    from intentrec.service import IntentRec
    from llm.settings import LLMSettings

    overrides = llm_overrides(backend, base_url, model)
    settings = LLMSettings(**overrides)
    from agents.context import parse_settings

    ctx_over = {**parse_settings(set_pairs), **{k: v for k, v in {"n_personas": personas, "n_tags": tags, "n_items": items,
                                  "judge_mode": judge_mode}.items() if v is not None}}
    t0 = time.perf_counter()
    retrieval_settings = None
    if index_cutoff:
        from core.options import parse_date
        from retrieval.settings import RetrievalSettings

        retrieval_settings = RetrievalSettings(cutoff=parse_date(index_cutoff, "--index-cutoff"))
    rec = IntentRec.from_settings(dataset, llm_settings=settings, retrieval_settings=retrieval_settings,
                                  prompts_dir=prompts, progress=not as_json)
    t_load = time.perf_counter() - t0
    seen_nodes: list[str] = []
    t1 = time.perf_counter()
    final = collect(rec.stream(user, now=now, **ctx_over), on_node=seen_nodes.append)
    wall = time.perf_counter() - t1
    out = {
        "user_id": user, "run_id": final.get("run_id"), "status": final.get("status"),
        "fallback": final.get("fallback"), "personas": final.get("personas", []),
        "tags": [{k: t.get(k) for k in ("tag", "persona", "intent", "grade")} for t in final.get("tags", [])],
        "recommendations": final.get("recommendations", []), "node_totals": final.get("node_totals", {}),
        "nodes_seen": sorted(set(seen_nodes)), "wall_s": round(wall, 2), "load_s": round(t_load, 2),
    }
    if as_json:
        print(json.dumps(out, default=_jsonable, ensure_ascii=False, indent=2))
        return
    _print(out)


def _print(out: dict[str, Any]) -> None:
    console.print(f"[bold]user[/] {out['user_id']}  run {out['run_id']}  status {out['status']}"
                  f"  wall {out['wall_s']} s (load {out['load_s']} s)")
    if out.get("fallback"):
        console.print(f"[yellow]fallback:[/] {out['fallback']}")
    for p in out["personas"]:
        console.print(f"  [cyan]persona[/] {p['name']}: {p['focus']}")
    console.print("  [cyan]tags[/] " + ", ".join(f"{t['tag']} ({t.get('grade')})" for t in out["tags"]))
    t = Table(title="Recommendations")
    for col in ("item", "title", "tag", "persona", "score", "grade", "explanation"):
        t.add_column(col, overflow="fold")
    for r in out["recommendations"]:
        t.add_row(r["item_id"], r["title"], r.get("tag") or "-", r.get("persona") or "-", f"{r['score']:.3f}",
                  r["grade"], r["explanation"])
    console.print(t)
    nt = Table(title="Time by node")
    for col in ("node", "runs", "wall s", "llm calls", "tokens in", "tokens out"):
        nt.add_column(col)
    for node, v in sorted(out["node_totals"].items(), key=lambda kv: -kv[1].get("wall_s", 0)):
        nt.add_row(node, str(v.get("runs", 0)), f"{v.get('wall_s', 0):.2f}", str(v.get("calls", 0)),
                   str(v.get("prompt_tokens", 0)), str(v.get("completion_tokens", 0)))
    console.print(nt)


def demo_cmd(
    users: int = typer.Option(3, "--users", "-n", help="How many real users to run (a fixed-seed sample)."),
    user: list[str] = typer.Option(None, "--user", "-u", help="Run this user (repeatable) instead of a sample."),
    dataset: str = typer.Option(None, "--dataset", "-d", help="Dataset spec (default completejourney)."),
    now: str = typer.Option(None, "--now", help="Demo date YYYY-MM-DD (default: the evaluation cutoff, 2017-10-01)."),
    backend: str = BACKEND_OPT,
    base_url: str = BASE_URL_OPT,
    model: str = MODEL_OPT,
    out: str = typer.Option(None, "--out", "-o", help="HTML report path (default <data dir>/reports/demo-TIME.html)."),
    factory: str = typer.Option(None, "--factory", help="module:function(RunLog) -> IntentRec instead of the settings."),
    runlog: Path = RUNLOG_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the rich output."),
) -> None:
    """The main job: build what is missing, run the graph for a few real users, write an HTML report."""
    from rich.panel import Panel
    from rich.rule import Rule

    from behavior.adapters import load_dataset_cached
    from behavior.tokens import get_token_counter
    from commands.demo import (
        DemoUser,
        default_report_path,
        demo_date,
        future_check,
        history_brief,
        pick_users,
        summarize,
        timed,
        write_demo_report,
    )
    from core.options import parse_date
    from intentrec.service import IntentRec
    from llm.settings import LLMSettings
    from retrieval.service import artifact_dir
    from retrieval.settings import RetrievalSettings
    from runlog.cli_options import load_factory
    from runlog.store import new_id, open_runlog

    say = (lambda *a, **k: None) if as_json else console.print
    t_start = time.perf_counter()
    say(Rule("[bold]IntentRec demo"))
    ds, t_data = timed(load_dataset_cached, dataset)
    when = demo_date(ds, parse_date(now, "--now") if now else None)
    say(f"[bold]1/4[/] dataset [cyan]{ds.name}[/]: {ds.users.height:,} users, {ds.items.height:,} items, "
        f"{ds.behaviors.height:,} behaviours ({t_data:.1f} s); demo date {when:%Y-%m-%d}")
    rsettings = RetrievalSettings(cutoff=when)
    cached = factory is not None or (artifact_dir(ds, rsettings) / "config.json").exists()
    say(f"[bold]2/4[/] retrieval towers and FAISS index trained before {when:%Y-%m-%d}: "
        + ("cached" if cached else "[yellow]not built yet — training now (one time)[/]"))
    overrides = llm_overrides(backend, base_url, model)
    llm_settings = LLMSettings(**overrides)
    if factory:
        rec, t_load = timed(load_factory(factory), open_runlog(runlog))
    else:
        rec, t_load = timed(IntentRec.from_settings, dataset, llm_settings=llm_settings, retrieval_settings=rsettings,
                            runlog=open_runlog(runlog), progress=not as_json)
    built = None if cached else _build_seconds(artifact_dir(ds, rsettings))
    say(f"[bold]3/4[/] retriever and {llm_settings.backend} model ready ({t_load:.1f} s"
        + (")" if cached else f", including the index build: {built} s)"))
    ids = list(dict.fromkeys(user)) if user else pick_users(ds, when, users)
    counter = get_token_counter()
    say(f"[bold]4/4[/] running the graph for {len(ids)} user(s): {', '.join(ids)}")
    done: list[DemoUser] = []
    for uid in ids:
        u = DemoUser(user_id=uid, brief=history_brief(ds, uid, when, counter))
        if not as_json:
            say(Rule(f"user {uid}"))
            _print_brief(u.brief)
        t0 = time.perf_counter()
        u.run_id = new_id() if rec.runlog is not None else None  # known even if the run raises
        try:
            u.output = _run_with_status(rec, uid, when, u.run_id, show=not as_json)
        except Exception as e:  # one user's failure is shown and reported; the demo goes on
            u.error = f"{type(e).__name__}: {e}"
            say(f"[red]failed:[/] {u.error}")
        u.wall_s = time.perf_counter() - t0
        u.future = future_check(ds, uid, when, u.output.get("recommendations", []))
        done.append(u)
        if not as_json and not u.error:
            _print_user(summarize(u))
    meta = {"dataset": ds.name, "demo_date": f"{when:%Y-%m-%d}",
            "backend": f"factory {factory}" if factory else llm_settings.backend,
            "index": "cached" if cached else "built", "load_s": round(t_data + t_load, 1),
            "index_build_s": built}
    path = Path(out) if out else default_report_path()
    report = write_demo_report(rec.runlog, done, path, title=f"IntentRec demo — {ds.name}, {when:%Y-%m-%d}",
                               meta=meta) if rec.runlog is not None else None
    total = time.perf_counter() - t_start
    result = {**meta, "users": [summarize(u) for u in done], "report": str(report) if report else None,
              "wall_s": round(total, 1)}
    if as_json:
        print(json.dumps(result, default=_jsonable, ensure_ascii=False, indent=2))
        return
    say(Rule())
    n_recs = sum(len(u.output.get("recommendations", [])) for u in done)
    say(Panel(f"{len(done)} users, {n_recs} recommendations, {sum(1 for u in done if u.error)} failed; "
              f"total {total:.0f} s (loading {t_data + t_load:.0f} s, graph "
              f"{sum(u.wall_s for u in done):.0f} s)\nreport: [bold]{report}[/]\n"
              f"trace a run: python app.py trace {done[0].run_id if done and done[0].run_id else 'RUN_ID'}",
              title="demo done", title_align="left"))


def _build_seconds(directory: Path) -> float | None:
    """The tower and index build time the build wrote into its ``config.json``."""
    try:
        return json.loads((directory / "config.json").read_text(encoding="utf-8")).get("build_seconds")
    except (OSError, ValueError):
        return None


def _run_with_status(rec: Any, user_id: str, when: Any, run_id: str | None, *, show: bool) -> dict[str, Any]:
    """Run the graph for one user (recorded as ``run_id``), showing the node being worked on."""
    counts: dict[str, int] = {}
    status = console.status(f"user {user_id}: starting", spinner="dots") if show else None

    def on_node(name: str) -> None:
        counts[name] = counts.get(name, 0) + 1
        if status:
            status.update(f"user {user_id}: {name} done ({counts[name]})")

    if status:
        status.start()
    try:
        return {"run_id": run_id, **collect(rec.stream(user_id, now=when, run_id=run_id), on_node=on_node)}
    finally:
        if status:
            status.stop()


def _print_brief(b: dict[str, Any]) -> None:
    console.print(f"  [cyan]history[/] {b['events']:,} events, {b['distinct_items']:,} items, "
                  f"{b['first_date']} → {b['last_date']}; compressed {b['raw_tokens']:,} → "
                  f"{b['compressed_tokens']:,} tokens ({b['reduction']:.0%} smaller)")
    console.print(f"  [cyan]top categories[/] {escape(', '.join(b['top_categories']))}")
    console.print(f"  [cyan]latest purchases[/] {escape(', '.join(b['recent_purchases']))}")


def _print_user(s: dict[str, Any]) -> None:
    console.print(f"  [cyan]run[/] {s['run_id']}  status {s['status']}  {s['wall_s']} s")
    if s.get("stage_s"):
        console.print("  [cyan]time[/] " + ", ".join(f"{n} {v:.1f} s" for n, v in s["stage_s"].items()))
    for p in s["personas"]:
        console.print(f"  [cyan]persona[/] {escape(p['name'])}: {escape(p['focus'])}")
    console.print("  [cyan]tags[/] " + escape(", ".join(f"{t['tag']} ({t.get('grade')})" for t in s["tags"])))
    fut = s["future"]["items"]
    t = Table(title=f"Recommendations for user {s['user_id']}", title_justify="left")
    for col in ("title", "category", "tag", "grade", "bought in next 28 d", "explanation"):
        t.add_column(col, overflow="fold")
    for r in s["recommendations"]:
        f = fut.get(r["item_id"], {})
        mark = "item ✓" if f.get("bought_item") else ("category ✓" if f.get("bought_category") else "-")
        t.add_row(escape(r["title"] or ""), escape(r.get("category") or ""), escape(r.get("tag") or "-"),
                  r.get("grade") or "", mark, escape(r.get("explanation") or ""))
    console.print(t)
