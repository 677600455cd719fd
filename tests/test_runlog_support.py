"""Helpers shared by the run log, trace, replay and prompt CLI tests (this module holds no tests):
a scripted ``IntentRec`` on the real completejourney data with a run log, a ``--factory`` for CLI
calls, and an in-process CLI runner that goes through ``app.run`` (so typed errors exit with 2)."""

from __future__ import annotations

import sys
from datetime import datetime
from functools import lru_cache
from typing import Any

from rich.console import Console

from tests.graph_fakes import FakeRetriever, make_model

NOW = "2017-10-01"
GENERATOR_SCHEMAS = ("PlannerOutput", "ExpertOutput", "ArbiterOutput", "StyleGuideline", "Explanation")
#: every IntentRec built by ``factory`` (so CLI tests can look at its model and retriever)
BUILT: list[Any] = []


@lru_cache(1)
def dataset() -> Any:
    from behavior.adapters import load_dataset_cached

    return load_dataset_cached("completejourney")


@lru_cache(1)
def items() -> list[dict]:
    cj = dataset()
    return cj.items.filter(cj.items["category"] != "").head(40).to_dicts()


@lru_cache(1)
def user_id() -> str:
    cj = dataset()
    hist = cj.behaviors.filter(cj.behaviors["ts"] < datetime(2017, 10, 1))
    counts = hist.group_by("user_id").len().sort(["len", "user_id"], descending=[True, False])
    return counts["user_id"][5]


def make_app(runlog: Any, model: Any = None, **ctx: Any) -> Any:
    from intentrec.service import IntentRec

    defaults = {"n_personas": 2, "n_tags": 2, "n_items": 3}
    return IntentRec(dataset=dataset(), retriever=FakeRetriever(items()), models={"default": model or make_model(k=2)},
                     runlog=runlog, **{**defaults, **ctx})


def factory(store: Any) -> Any:
    """``--factory tests.test_runlog_support:factory``."""
    rec = make_app(store)
    BUILT.append(rec)
    return rec


def run_cli(args: list[str], monkeypatch: Any, capsys: Any, width: int = 200) -> tuple[int, str, str]:
    """Run ``app.py ARGS`` in process through ``app.run`` (typed errors → exit code 2 and one line)."""
    import app
    import commands.judge
    import commands.runs
    import prompts.cli

    # the CLI callback configures structlog once per process with the stderr of that moment, which
    # is pytest's capture file here (closed afterwards); keep the configuration as it is
    monkeypatch.setattr("core.logging._configured", True)
    for mod in (commands.runs, commands.judge, prompts.cli):
        monkeypatch.setattr(mod, "console", Console(width=width, color_system=None))
    monkeypatch.setattr(app, "err_console", Console(stderr=True, width=width, color_system=None))
    monkeypatch.setattr(sys, "argv", ["app.py", *args])
    code = 0
    try:
        app.run()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def kill_when(proc: Any, ready: Any, *, timeout_s: float = 120, what: str = "the subprocess") -> Any:
    """Poll ``ready()`` until it returns something, then SIGKILL ``proc`` and return that value."""
    import signal
    import time

    found = None
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and found is None:
            assert proc.poll() is None, f"{what} ended early: {proc.stderr.read() if proc.stderr else ''}"
            found = ready()
            if found is None:
                time.sleep(0.05)
        assert found is not None, f"{what} never got going"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return found
