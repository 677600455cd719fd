"""Run log and tracing settings (environment ``INTENTREC_*``, or keyword arguments).

| setting | environment | default |
|---|---|---|
| record runs | ``INTENTREC_RUNLOG`` (``0``/``false`` switches it off) | on |
| run log file | ``INTENTREC_RUNLOG_PATH`` | ``<data dir>/runs.sqlite`` |
| tracing callbacks | ``INTENTREC_CALLBACKS`` (comma list: ``langsmith``, ``langfuse``, ``otel``) | none |
| LangSmith project | ``INTENTREC_LANGSMITH_PROJECT`` | ``intentrec`` |

Callbacks are off by default and nothing of theirs is imported unless named here
(``runlog/callbacks.py``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

CALLBACK_NAMES = ("langsmith", "langfuse", "otel")


class TraceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INTENTREC_", extra="ignore")

    runlog: bool = True
    runlog_path: Path | None = None
    callbacks: str = ""
    langsmith_project: str = "intentrec"

    def runlog_file(self) -> Path:
        if self.runlog_path is not None:
            return Path(self.runlog_path).expanduser()
        from runlog.store import default_path

        return default_path()

    def callback_names(self) -> list[str]:
        return [n.strip().lower() for n in self.callbacks.split(",") if n.strip()]
