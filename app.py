"""IntentRec command line (typer + rich).

Sub-commands live beside the code they drive (``behavior/cli.py``, ``llm/cli.py``, ...); this file
only wires them together, configures logging once, and turns IntentRecError into one clear line
(exit code 2) instead of a traceback.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from core.errors import IntentRecError
from core.logging import configure_logging

app = typer.Typer(help="IntentRec: intent-centric multi-agent recommendations.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
err_console = Console(stderr=True)


@app.callback()
def main(
    log_json: bool = typer.Option(False, "--log-json", help="Log JSON lines (also INTENTREC_LOG_JSON=1)."),
    log_level: str = typer.Option(None, "--log-level", help="DEBUG, INFO, WARNING (default), ERROR."),
) -> None:
    configure_logging(json=log_json or None, level=log_level)


def _register() -> None:
    from batch.cli import batch_cmd, batches_cmd
    from behavior.cli import data_app
    from commands.judge import judge_app
    from commands.recommend import demo_cmd, recommend_cmd
    from commands.runs import runs_app, trace_cmd
    from evals.cli import bench_app, eval_app
    from learning.cli import train_app
    from llm.cli import llm_app
    from prompts.cli import prompts_app
    from retrieval.cli import index_app
    from serve.cli import serve_cmd

    app.add_typer(data_app, name="data", help="Inspect datasets and compressed histories.")
    app.add_typer(llm_app, name="llm", help="Check the configured LLM backend.")
    app.add_typer(index_app, name="index", help="Train the towers and build the FAISS index.")
    app.add_typer(eval_app, name="eval", help="Offline evaluation.")
    app.add_typer(bench_app, name="bench", help="Benchmarks.")
    app.add_typer(train_app, name="train", help="The learning loop: training data from the log, LoRA SFT.")
    app.add_typer(prompts_app, name="prompts", help="List, show and diff prompt templates.")
    app.command("demo")(demo_cmd)
    app.command("recommend")(recommend_cmd)
    app.add_typer(runs_app, name="runs", help="List logged runs.")
    app.command("trace")(trace_cmd)
    app.add_typer(judge_app, name="judge", help="Replay the judge on logged runs; human labels and agreement.")
    app.command("batch")(batch_cmd)
    app.command("batches")(batches_cmd)
    app.command("serve")(serve_cmd)


_register()


def __getattr__(name: str):
    """``app.graph``: the compiled graph for LangGraph Studio (``langgraph.json``), built lazily on
    first access with the default settings, so importing the CLI stays fast."""
    if name == "graph":
        from intentrec.service import IntentRec

        return IntentRec.from_settings(progress=False, runlog=False).graph
    raise AttributeError(name)


def run() -> None:
    try:
        app()
    except IntentRecError as e:
        err_console.print(f"[bold red]error:[/] {e}")
        sys.exit(2)


if __name__ == "__main__":
    run()
