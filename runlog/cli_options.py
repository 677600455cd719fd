"""Options and helpers shared by the commands that open a run log (``--runlog``, ``--factory``)."""

from __future__ import annotations

import importlib
import os
from typing import Any

import typer

from runlog.store import RunLogError

RUNLOG_OPT = typer.Option(None, "--runlog", help="Run log file (default: INTENTREC_RUNLOG_PATH or <data dir>/runs.sqlite).")
FACTORY_ENV = "INTENTREC_FACTORY"


def load_factory(spec: str | None) -> Any:
    """``module:function`` → the function (``None`` when no factory is named)."""
    spec = spec or os.environ.get(FACTORY_ENV)
    if not spec:
        return None
    mod, _, fn = spec.partition(":")
    if not mod or not fn:
        raise RunLogError(f"--factory must look like module:function, not {spec!r}")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise RunLogError(f"cannot load factory {spec!r}: {e}") from e
