"""`app.py judge replay | export | import | agreement`: re-judge logged outputs and compare the judge
with itself and with people. See ``runlog/judge_replay.py`` and ``runlog/judge_labels.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from intentrec.service import build_app
from llm.cli_options import llm_overrides
from runlog.cli_options import RUNLOG_OPT
from runlog.store import RunLogError, open_runlog

judge_app = typer.Typer(no_args_is_help=True)
console = Console()


def _selection(store: Any, run: str | None, since: str | None, all_runs: bool, *, default_all: bool = False) -> list[str]:
    from runlog.judge_replay import select_runs

    if run is None and since is None and not all_runs and default_all:
        all_runs = True
    return select_runs(store, run=run, since=since, all_runs=all_runs)


def _agreement_table(title: str, rep: dict[str, Any]) -> Table:
    t = Table(title=title)
    for col in ("what", "n", "agreement", "kappa"):
        t.add_column(col)
    g = rep["grade"]
    t.add_row("[bold]grade (S/A/B)[/]", str(g["n"]), _fmt(g["agreement"]), _fmt(g["kappa"]))
    for k, v in rep["dimensions"].items():
        t.add_row(k, str(v["n"]), _fmt(v["agreement"]), _fmt(v["kappa"]))
    return t


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


@judge_app.command("replay")
def replay_cmd(
    run: str = typer.Option(None, "--run", help="Replay one run (id or prefix)."),
    since: str = typer.Option(None, "--since", help="Replay runs started on or after this date (YYYY-MM-DD)."),
    all_runs: bool = typer.Option(False, "--all", help="Replay every logged run."),
    prompts: Path = typer.Option(None, "--prompts", help="Prompt override folder for the judge."),
    backend: str = typer.Option(None, "--backend", help="Judge LLM backend: local, openai."),
    model: str = typer.Option(None, "--model", help="Model name (openai) or GGUF path (local)."),
    base_url: str = typer.Option(None, "--base-url", help="OpenAI-compatible server URL."),
    mode: str = typer.Option(None, "--mode", help="joint or per_dimension (default: as logged)."),
    threshold: float = typer.Option(None, "--threshold", help="S threshold (default: as logged)."),
    factory: str = typer.Option(None, "--factory", help="module:function building an IntentRec whose judge model is used."),
    as_json: bool = typer.Option(False, "--json"),
    runlog: Path = RUNLOG_OPT,
) -> None:
    """Re-run only the judge on logged judge requests; write a linked verdict set; report agreement."""
    from prompts.registry import PromptRegistry
    from runlog.judge_replay import replay_runs

    store = open_runlog(runlog)
    ids = _selection(store, run, since, all_runs)
    registry = PromptRegistry([prompts]) if prompts else None
    if factory:
        rec = build_app(store, dataset=None, factory=factory)
        judge_model = rec.context().model("judge")
        registry = registry or rec.prompts
    else:
        from llm.factory import make_chat_model
        from llm.settings import LLMSettings

        opts = llm_overrides(backend, base_url, model)
        judge_model = make_chat_model(LLMSettings(**opts))
    report = replay_runs(store, ids, model=judge_model, prompts=registry, mode=mode, threshold=threshold)
    if as_json:
        print(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
        return
    t = Table(title="Judge replay")
    for col in ("run", "replay run", "verdict set", "requests", "judge calls", "grade agreement", "kappa"):
        t.add_column(col, overflow="fold")
    for r in report.runs:
        t.add_row(r.run_id, r.replay_run_id, r.set_id, str(r.requests), str(r.model_calls),
                  _fmt(r.agreement["grade"]["agreement"]), _fmt(r.agreement["grade"]["kappa"]))
    console.print(t)
    console.print(_agreement_table("Replay vs original verdicts", report.agreement))
    if report.human:
        for which in ("original", "replay"):
            if report.human.get(which):
                console.print(_agreement_table(f"Judge ({which}) vs human labels", report.human[which]))


@judge_app.command("export")
def export_cmd(
    sample: int = typer.Option(None, "--sample", help="Sample N judged outputs (fixed seed); all when omitted."),
    run: str = typer.Option(None, "--run", help="Only this run."),
    since: str = typer.Option(None, "--since", help="Runs started on or after this date."),
    all_runs: bool = typer.Option(False, "--all", help="Every run (the default)."),
    out: Path = typer.Option(None, "--out", "-o", help="Write here (.csv or .jsonl); stdout when omitted."),
    fmt: str = typer.Option(None, "--format", help="csv or jsonl (default: from --out, else csv)."),
    seed: int = typer.Option(0, "--seed"),
    source: str = typer.Option("graph", "--source", help="Verdicts shown: graph (as logged) or replay (latest)."),
    runlog: Path = RUNLOG_OPT,
) -> None:
    """Write a labelling file of logged outputs with the judge's verdicts and empty human columns."""
    from runlog.judge_labels import export_rows, format_for, write_labelling_file

    store = open_runlog(runlog)
    ids = _selection(store, run, since, all_runs, default_all=True)
    rows = export_rows(store, ids, sample=sample, seed=seed, source=source)
    text = write_labelling_file(rows, format_for(out or "x.csv", fmt))
    if out is None:
        print(text, end="")
        return
    out.write_text(text, encoding="utf-8")
    console.print(f"wrote {len(rows)} outputs to label to {out}")


@judge_app.command("import")
def import_cmd(
    labels: Path = typer.Argument(..., help="A filled-in labelling file (.csv or .jsonl)."),
    labeler: str = typer.Option("human", "--labeler", help="Name for rows without a labeler."),
    fmt: str = typer.Option(None, "--format", help="csv or jsonl (default: from the suffix)."),
    runlog: Path = RUNLOG_OPT,
) -> None:
    """Load human labels (validated line by line; nothing is stored if any line is bad)."""
    from runlog.judge_labels import import_labels

    store = open_runlog(runlog)
    res = import_labels(store, labels, labeler=labeler, fmt=fmt)
    console.print(f"imported {res['labels']} labels on {res['subjects']} outputs "
                  f"({res['unlabelled']} rows had no label)")


@judge_app.command("agreement")
def agreement_cmd(
    run: str = typer.Option(None, "--run"),
    since: str = typer.Option(None, "--since"),
    all_runs: bool = typer.Option(False, "--all", help="Every run (the default)."),
    against: str = typer.Option("graph", "--against", help="graph (as logged), replay (latest) or a verdict set id."),
    as_json: bool = typer.Option(False, "--json"),
    runlog: Path = RUNLOG_OPT,
) -> None:
    """Judge vs human labels, per dimension, with Cohen's kappa."""
    from runlog.judge_replay import human_agreement

    store = open_runlog(runlog)
    ids = _selection(store, run, since, all_runs, default_all=True)
    rep = human_agreement(store, ids, against)
    if rep is None:
        raise RunLogError("no human labels for these runs; write a file with `judge export` and load it with "
                          "`judge import`")
    if as_json:
        print(json.dumps(rep, indent=2, ensure_ascii=False))
        return
    console.print(_agreement_table(f"Judge ({against}) vs human labels ({rep['labels']} labels)", rep))
