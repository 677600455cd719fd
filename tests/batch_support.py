"""Factories for batch tests (this module holds no tests): the scripted ``IntentRec`` of
``tests.test_runlog_support`` with a per-call delay read from ``INTENTREC_TEST_LATENCY_S``, so a
batch run in a subprocess takes long enough to be killed midway. Used as
``app.py batch --factory tests.batch_support:slow_factory``."""

from __future__ import annotations

import os
from typing import Any

from tests.graph_fakes import make_model
from tests.test_runlog_support import make_app


def slow_factory(store: Any) -> Any:
    latency = float(os.environ.get("INTENTREC_TEST_LATENCY_S", "0"))
    return make_app(store, make_model(k=2, latency_s=latency))
