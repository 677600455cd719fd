"""`app.py batch ...` (run or resume a batch with a progress bar) and `app.py batches [ID]` (list, show)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from llm.cli_options import BACKEND_OPT, BASE_URL_OPT, MODEL_OPT
from runlog.cli_options import RUNLOG_OPT
from runlog.store import open_runlog

console = Console()
err_console = Console(stderr=True)


class RateColumn(ProgressColumn):
    """Users per minute, from rich's own speed estimate."""

    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- users/min" if not speed else f"{speed * 60:.1f} users/min", style="progress.data.speed")


def batch_cmd(
    users: int = typer.Option(None, "--users", "-n", help="A fixed-seed sample of N users with history before --now."),
    all_users: bool = typer.Option(False, "--all", help="Every user with history before --now."),
    user_file: Path = typer.Option(None, "--user-file", help="User ids, one per line."),
    resume: str = typer.Option(None, "--resume", help="Finish batch BATCH_ID: only the users still missing."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="With --resume: run failed users again."),
    concurrency: int = typer.Option(1, "--concurrency", "-c", help="Users in flight at once (per Ray task with --engine ray)."),
    workers: int = typer.Option(1, "--workers", "-w", help="local engine: processes, each with its own model "
                                "and cores/N llama.cpp threads, claiming users from the same run log."),
    engine: str = typer.Option("local", "--engine", help="local (threads) or ray."),
    ray_address: str = typer.Option(None, "--ray-address", help="Join this Ray cluster (default: start Ray locally)."),
    partitions: int = typer.Option(None, "--partitions", help="Ray: partitions of users (default: Ray's CPUs)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the --users sample."),
    dataset: str = typer.Option(None, "--dataset", "-d", help="Dataset spec (default completejourney)."),
    now: str = typer.Option(None, "--now", help="Environment date (YYYY-MM-DD) for every user."),
    backend: str = BACKEND_OPT,
    base_url: str = BASE_URL_OPT,
    model: str = MODEL_OPT,
    index_cutoff: str = typer.Option(None, "--index-cutoff", help="Towers and index trained before YYYY-MM-DD."),
    prompts: str = typer.Option(None, "--prompts", help="Prompt override folder."),
    personas: int = typer.Option(None, "--personas", help="K personas."),
    tags: int = typer.Option(None, "--tags", help="N final tags."),
    items: int = typer.Option(None, "--items", help="Items to recommend per user."),
    settings: list[str] = typer.Option(None, "--set", help="A Context setting, KEY=VALUE (repeatable), e.g. "
                                       "history_budget=500; see agents/context.py."),
    factory: str = typer.Option(None, "--factory", help="module:function(RunLog) -> IntentRec instead of the settings."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON (no progress bar)."),
    durability: str = typer.Option("normal", "--durability", help="Run log sync: normal (WAL, survives a "
                                   "process kill; the default for batches) or full (also a power cut)."),
    runlog: Path = RUNLOG_OPT,
) -> None:
    """Run the graph for many users; results go to the run log. Resumable after a kill (--resume)."""
    from batch.runner import BatchError, BatchSpec, build_rec, pin_spec, select_users
    from core.options import parse_date
    from runlog.batches import BatchStore

    store = open_runlog(runlog, durability=durability)
    batches = BatchStore(store)
    rec = None
    if resume:
        if users or all_users or user_file:
            raise BatchError("--resume takes the users from the batch; drop --users/--all/--user-file")
        if settings:
            raise BatchError("--resume takes the settings from the batch; drop --set")
        batch_id = batches.resolve(resume)
    else:
        if retry_failed:
            raise BatchError("--retry-failed needs --resume BATCH_ID")
        when = parse_date(now, "--now") if now else None
        from agents.context import parse_settings

        overrides = {**parse_settings(settings),
                     **{k: v for k, v in {"n_personas": personas, "n_tags": tags, "n_items": items}.items() if v}}
        spec = pin_spec(BatchSpec(dataset=dataset, now=when.date().isoformat() if when else None,
                                     overrides=overrides, backend=backend, model=model, base_url=base_url,
                                     index_cutoff=index_cutoff, prompts=prompts, factory=factory))
        if (engine == "local" and workers == 1) or factory:
            rec = build_rec(spec, store, progress=not as_json)
            ds = rec.dataset
        else:
            from behavior.adapters import load_dataset_cached

            ds = load_dataset_cached(dataset)
        picked, report = select_users(ds, n=users, all_users=all_users, user_file=user_file, now=when, seed=seed)
        batch_id = batches.create(picked, spec=spec.model_copy(update={"seed": seed, "selection": report}).model_dump(),
                                  dataset=dataset or ds.name, engine=engine)
        if not as_json:
            left = ", ".join(f"{v} {k}" for k, v in report.items() if v)
            err_console.print(f"batch [bold]{batch_id}[/]: {len(picked)} users" + (f" (left out: {left})" if left else ""))
    if engine != "local" or workers > 1:
        rec = None
    summary = _run(store, batch_id, engine=engine, concurrency=concurrency, workers=workers,
                   retry_failed=retry_failed, rec=rec,
                   ray_address=ray_address, partitions=partitions, show=not as_json)
    if as_json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    _print_summary(summary)


def _run(store: Any, batch_id: str, *, show: bool, **kwargs: Any) -> dict[str, Any]:
    from batch.runner import execute

    if not show:
        return execute(store, batch_id, **kwargs)
    columns = [TextColumn("[bold]batch {task.fields[bid]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("failed {task.fields[failed]}"), RateColumn(), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn()]
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task("batch", total=None, bid=batch_id[:12], failed=0)

        def on_progress(counts: dict[str, int]) -> None:
            progress.update(task, total=counts["total"], completed=counts["done"] + counts["failed"],
                            failed=counts["failed"])

        return execute(store, batch_id, on_progress=on_progress, progress_build=True, **kwargs)


def _print_summary(s: dict[str, Any]) -> None:
    c, t = s["counts"], s["this_run"]
    console.print(f"batch [bold]{s['batch_id']}[/] ({s['engine']}, concurrency {s['concurrency']}): "
                  f"{c['done']} done, {c['failed']} failed, {c['pending']} pending of {c['total']}; this run: "
                  f"{t['done']} done, {t['failed']} failed in {s['wall_s']} s ({s['users_per_min']} users/min)")
    if t["settled_from_previous"] and any(t["settled_from_previous"].values()):
        console.print(f"settled from the previous attempt: {t['settled_from_previous']}")
    if s["failed"]:
        table = Table(title="Failed users (retry with --resume ID --retry-failed)")
        table.add_column("user")
        table.add_column("error", overflow="fold")
        for f in s["failed"][:50]:
            table.add_row(escape(f["user_id"]), escape(f["error"] or ""))
        console.print(table)


def batches_cmd(
    batch_id: str = typer.Argument(None, help="Show this batch's users (default: list batches)."),
    status: str = typer.Option(None, "--status", "-s", help="With BATCH_ID: pending, running, done or failed."),
    as_json: bool = typer.Option(False, "--json"),
    runlog: Path = RUNLOG_OPT,
) -> None:
    """Logged batches with their counts, or one batch's users with status, run id and error."""
    from runlog.batches import BatchStore

    batches = BatchStore(open_runlog(runlog))
    if batch_id:
        info = batches.get(batch_id)
        rows = batches.items(info["batch_id"], status=status)
        if as_json:
            print(json.dumps({**info, "items": rows}, indent=2, ensure_ascii=False, default=str))
            return
        console.print(f"batch [bold]{info['batch_id']}[/] {info['status']} {info['counts']}")
        table = Table()
        for col in ("#", "user", "status", "run", "attempts", "wall s", "error"):
            table.add_column(col, overflow="fold")
        for r in rows:
            table.add_row(str(r["position"]), escape(r["user_id"]), r["status"], (r["run_id"] or "")[:8],
                          str(r["attempts"]), "" if r["wall_s"] is None else f"{r['wall_s']:.1f}", escape(r["error"] or ""))
        console.print(table)
        return
    rows = batches.list()
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=False, default=str))
        return
    table = Table()
    for col in ("batch", "created", "engine", "status", "users", "done", "failed", "pending"):
        table.add_column(col)
    for b in rows:
        c = b["counts"]
        table.add_row(b["batch_id"], b["created_at"][:19], b["engine"] or "", b["status"], str(c["total"]),
                      str(c["done"]), str(c["failed"]), str(c["pending"] + c["running"]))
    console.print(table)
