"""Shared fixtures. Real datasets are loaded once per test run (completejourney takes a few seconds)."""

from __future__ import annotations

import pytest

from behavior.adapters import load_dataset
from behavior.tokens import get_token_counter


@pytest.fixture(scope="package")
def cj():
    """Complete Journey from the installed package, default policies."""
    return load_dataset("completejourney")


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
