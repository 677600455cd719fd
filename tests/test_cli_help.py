"""Every command's --help renders (rich markup in a docstring or help text can break it)."""

from __future__ import annotations

import pytest
from typer.main import get_command
from typer.testing import CliRunner

import app


def _paths(cmd, prefix=()):
    yield prefix
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _paths(sub, (*prefix, name))


PATHS = list(_paths(get_command(app.app)))


def test_every_command_is_listed():
    names = {p[0] for p in PATHS if p}
    assert {"demo", "batch", "batches", "serve", "recommend", "trace", "eval", "bench", "data", "train"} <= names


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "app")
def test_help_renders(path):
    res = CliRunner().invoke(app.app, [*path, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output
