"""Shared fixtures. Real datasets are loaded once per test run (completejourney takes a few seconds)."""

from __future__ import annotations

import pytest

from behavior.adapters import load_dataset
from behavior.tokens import get_token_counter


@pytest.fixture(scope="package")
def cj():
    """Complete Journey from the installed package, default policies."""
    return load_dataset("completejourney")


@pytest.fixture(scope="module")
def user_id():
    """A completejourney household with a long history before 2017-10-01 (the 6th longest)."""
    from tests.test_runlog_support import user_id

    return user_id()


@pytest.fixture(scope="module")
def items():
    """40 real completejourney items with a category (the graph tests' fake retriever serves them)."""
    from tests.test_runlog_support import items

    return items()


@pytest.fixture(scope="package")
def taobao():
    """The shared Taobao UserBehavior sample (``core.paths.shared_data_dir()``)."""
    return load_dataset("taobao")


@pytest.fixture(scope="package")
def movielens():
    """The shared MovieLens ml-latest-small copy."""
    return load_dataset("movielens")


@pytest.fixture(scope="package")
def count_tokens():
    """The embedded model's tokenizer (vocabulary only)."""
    return get_token_counter()


# ----- wall time per test file, printed at the end of every run (CI's budget: see the README) ------

_FILE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report):
    """Add each phase's duration (setup, call, teardown) to its test file's total."""
    path = report.nodeid.split("::", 1)[0]
    _FILE_SECONDS[path] = _FILE_SECONDS.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    if not _FILE_SECONDS:
        return
    terminalreporter.section("wall time per test file (the slowest; fixtures count where they are set up)")
    for path, s in sorted(_FILE_SECONDS.items(), key=lambda kv: -kv[1])[:12]:
        terminalreporter.write_line(f"{s:8.1f} s  {path}")
    terminalreporter.write_line(f"{sum(_FILE_SECONDS.values()):8.1f} s  all files")
