"""The run log: a durable SQLite record of every graph run (nodes, model calls with rendered prompts,
verdicts, recommendations, the context used), with trace rendering, time-travel forks and the
optional tracing callbacks. See ``docs/runlog.md``."""

from runlog.store import SCHEMA_VERSION, RunLog, RunLogError, RunNotFoundError, open_runlog

__all__ = ["SCHEMA_VERSION", "RunLog", "RunLogError", "RunNotFoundError", "open_runlog"]
