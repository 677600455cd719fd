"""structlog configuration, done once per process.

Console output for people by default; JSON lines when asked (``--log-json`` or ``INTENTREC_LOG_JSON=1``).
``run_id``, ``thread_id`` and ``node`` are bound as contextvars by the graph, so every line a node logs
carries them.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog

_configured = False


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is *now*, not the stream that was current at configure time:
    test runners and CLI harnesses swap (and close) stderr, and a cached handle would then raise."""

    def write(self, s: str) -> int:
        return sys.stderr.write(s)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(*, json: bool | None = None, level: str | None = None, force: bool = False) -> None:
    global _configured
    if _configured and not force:
        return
    if json is None:
        json = os.environ.get("INTENTREC_LOG_JSON", "").lower() in {"1", "true", "yes"}
    level_name = (level or os.environ.get("INTENTREC_LOG_LEVEL", "WARNING")).upper()
    lvl = getattr(logging, level_name, logging.WARNING)
    processors: list = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json:
        processors += [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),
        cache_logger_on_first_use=False,
    )
    _configured = True


def get_logger(name: str | None = None):
    return structlog.get_logger(name)
