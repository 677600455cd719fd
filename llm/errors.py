"""Typed LLM errors.

Every failure talking to a model surfaces as an :class:`LLMError` subclass carrying the model id,
how many attempts were made and the raw text seen (model output, or the server's error body), so a
run log or the CLI can say exactly what happened in one line. They derive from ``IntentRecError``,
so ``app.py`` prints them without a traceback.

Design decisions:

* The hierarchy is by *what the user has to fix*, not by transport: an unreachable server
  (:class:`LLMConnectionError`, with :class:`LLMTimeoutError` as a subclass so one ``except``
  covers "no answer"), a wrong model name (:class:`ModelNotFoundError`), a schema the backend
  cannot enforce (:class:`SchemaNotSupportedError`), a prompt larger than the context
  (:class:`ContextLengthError`), bad settings (:class:`LLMConfigError`), anything else the server
  said (:class:`LLMServerError`), and output that never validated (:class:`StructuredOutputError`).
* ``LLMError`` and ``StructuredOutputError`` are also importable from ``llm.structured`` (where
  they were first published); this module is their home so backends can raise them without
  importing the structured-call helper.
"""

from __future__ import annotations

from core.errors import IntentRecError


def _clip(text: str, n: int = 300) -> str:
    text = text or ""
    return text if len(text) <= n else text[: n - 3] + "..."


class LLMError(IntentRecError):
    """Any failure talking to a model. Carries the model id and what happened."""

    def __init__(self, message: str, *, model: str = "", attempts: int = 0, raw: list[str] | None = None):
        self.model = model
        self.attempts = attempts
        self.raw = list(raw or [])
        super().__init__(message)


class StructuredOutputError(LLMError):
    """The model's output did not validate against the schema after every attempt."""

    def __init__(self, *, model: str, schema: str, attempts: int, raw: list[str], errors: list[str],
                 hint: str = ""):
        self.schema = schema
        self.errors = errors
        self.hint = hint
        last = (raw[-1] if raw else "")[:300]
        super().__init__(
            f"model {model!r} gave no valid {schema} after {attempts} attempt(s): {errors[-1] if errors else ''}"
            f" | last raw output: {last!r}" + (f" | {hint}" if hint else ""),
            model=model, attempts=attempts, raw=raw,
        )


class LLMConfigError(LLMError):
    """Settings that cannot work (unknown backend, missing GGUF file, unreadable config file)."""


class LLMConnectionError(LLMError):
    """The server could not be reached (connection refused, reset, DNS)."""

    def __init__(self, message: str, *, model: str = "", attempts: int = 0, raw: list[str] | None = None,
                 base_url: str = ""):
        self.base_url = base_url
        super().__init__(message, model=model, attempts=attempts, raw=raw)


class LLMTimeoutError(LLMConnectionError):
    """The server accepted the request but did not answer within ``timeout_s``."""


class ModelNotFoundError(LLMError):
    """The server does not serve the requested model name (HTTP 404 / ``model_not_found``)."""

    def __init__(self, message: str, *, model: str = "", attempts: int = 0, raw: list[str] | None = None,
                 available: list[str] | None = None):
        self.available = list(available or [])
        super().__init__(message, model=model, attempts=attempts, raw=raw)


class LLMAuthError(LLMError):
    """The server rejected the API key (HTTP 401/403)."""


class SchemaNotSupportedError(LLMError):
    """The backend cannot enforce this output schema (grammar conversion failed, or the server
    rejected the structured-output request)."""

    def __init__(self, message: str, *, model: str = "", attempts: int = 0, raw: list[str] | None = None,
                 schema: str = "", method: str = ""):
        self.schema = schema
        self.method = method
        super().__init__(message, model=model, attempts=attempts, raw=raw)


class ContextLengthError(LLMError):
    """The prompt does not fit the model's context window."""


class LLMServerError(LLMError):
    """Any other error the server reported (HTTP status and body are in the message and ``raw``)."""

    def __init__(self, message: str, *, model: str = "", attempts: int = 0, raw: list[str] | None = None,
                 status: int | None = None):
        self.status = status
        super().__init__(message, model=model, attempts=attempts, raw=raw)


__all__ = [
    "ContextLengthError", "LLMAuthError", "LLMConfigError", "LLMConnectionError", "LLMError",
    "LLMServerError", "LLMTimeoutError", "ModelNotFoundError", "SchemaNotSupportedError",
    "StructuredOutputError", "_clip",
]
