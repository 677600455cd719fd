"""`app.py runs list` and `app.py trace RUN_ID [--node NAME] [--json] [--fork NODE --edit JSON]`.

Every command reads the run log at ``--runlog PATH`` (default ``INTENTREC_RUNLOG_PATH``, else
``<data dir>/runs.sqlite``). ``--fork`` needs the graph: it is built with ``IntentRec.from_settings``
for the run's dataset and the ``--backend`` / ``--model`` / ``--base-url`` given, or by
``--factory module:function`` (``INTENTREC_FACTORY``), a function taking the ``RunLog`` and returning
an ``IntentRec`` that uses it (for custom retrievers and models, and for tests).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from runlog.cli_options import RUNLOG_OPT
from runlog.store import RunLog, RunLogError, open_runlog
from runlog.trace import STATUS_STYLE, build_trace, render_node, render_tree

runs_app = typer.Typer(no_args_is_help=True)
console = Console()



def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


@runs_app.command("list")
def list_cmd(
    user: str = typer.Option(None, "--user", "-u", help="Only this user's runs."),
    status: str = typer.Option(None, "--status", "-s", help="ok, empty, error, incomplete, running, cancelled..."),
    kind: str = typer.Option(None, "--kind", help="recommend, fork or replay."),
    limit: int = typer.Option(50, "--limit", "-n", help="Newest N runs."),
    as_json: bool = typer.Option(False, "--json"),
    runlog: Path = RUNLOG_OPT,
) -> None:
    """Logged runs, newest first."""
    store = open_runlog(runlog)
    rows = store.runs(user=user, status=status, kind=kind, limit=limit)
    stats = store.run_stats([r["run_id"] for r in rows])
    out = [{"run_id": r["run_id"], "kind": r["kind"], "user_id": r["user_id"], "status": r["status"],
            "started_at": r["started_at"], "wall_s": r["wall_s"], "parent_run_id": r["parent_run_id"],
            "dataset": r["dataset"], **stats[r["run_id"]]} for r in rows]
    if as_json:
        _print_json(out)
        return
    t = Table(title=f"Runs in {store.path}", caption="ids shortened: any unique prefix works (--json: full ids)",
              box=None, padding=(0, 1, 0, 0), header_style="bold underline")
    for col in ("run", "kind", "user", "status", "started UTC", "wall s", "calls", "tokens", "recs", "parent"):
        t.add_column(col, no_wrap=True)
    for r in out:
        st = r["status"]
        t.add_row(r["run_id"][:8], r["kind"], str(r["user_id"]), f"[{STATUS_STYLE.get(st.split(':')[0], 'white')}]{st}[/]",
                  r["started_at"][5:16].replace("T", " "), "-" if r["wall_s"] is None else f"{r['wall_s']:.2f}",
                  str(r["calls"]), str(r["tokens"]), str(r["recommendations"]), (r["parent_run_id"] or "")[:8])
    console.print(t)
    if not out:
        console.print("no runs match")


def trace_cmd(
    run_id: str = typer.Argument(..., help="Run id (or a unique prefix of at least 4 characters)."),
    node: str = typer.Option(None, "--node", help="Print this node's rendered prompts, raw and parsed output."),
    subject: str = typer.Option(None, "--subject", help="With --node: only calls about this subject."),
    as_json: bool = typer.Option(False, "--json", help="The whole trace as JSON."),
    fork: str = typer.Option(None, "--fork", help="Re-run from the checkpoint before this node..."),
    edit: str = typer.Option(None, "--edit", help="...with this JSON object applied to the state."),
    backend: str = typer.Option(None, "--backend", help="--fork: LLM backend (local, openai)."),
    model: str = typer.Option(None, "--model", help="--fork: model name or GGUF path."),
    base_url: str = typer.Option(None, "--base-url", help="--fork: OpenAI-compatible server URL."),
    factory: str = typer.Option(None, "--factory", help="--fork: module:function building the IntentRec."),
    runlog: Path = RUNLOG_OPT,
) -> None:
    """Draw a run as a tree (graph → nodes → subgraph nodes), show one node's calls, or fork it."""
    store = open_runlog(runlog)
    if edit is not None and fork is None:
        raise RunLogError("--edit needs --fork NODE")
    if fork is not None:
        _fork(store, run_id, fork, edit, backend=backend, model=model, base_url=base_url, factory=factory,
              as_json=as_json)
        return
    trace = build_trace(store, run_id)
    if as_json:
        _print_json(trace)
        return
    if node:
        render_node(console, trace, node, subject)
        return
    console.print(render_tree(trace))


def _fork(store: RunLog, run_id: str, node: str, edit: str | None, *, as_json: bool, **build: Any) -> None:
    try:
        values = json.loads(edit) if edit else {}
    except json.JSONDecodeError as e:
        raise RunLogError(f"--edit is not valid JSON: {e}") from e
    run = store.get_run(run_id)
    from runlog.fork import check_edit

    check_edit(values)  # fail before loading models and data
    from intentrec.service import build_app

    rec = build_app(store, dataset=run.get("dataset"), **build)
    out = rec.fork(run["run_id"], node=node, edit=values)
    if as_json:
        _print_json({"run_id": out.get("run_id"), "fork": out.get("fork"), "status": out.get("status"),
                     "recommendations": out.get("recommendations", []), "tags": out.get("tags", [])})
        return
    console.print(f"forked run {escape(run['run_id'])} at [bold]{escape(node)}[/] → new run "
                  f"[bold]{out.get('run_id')}[/] ({out.get('status')}, method {out['fork']['method']})")
    console.print(render_tree(build_trace(store, out["run_id"])))
