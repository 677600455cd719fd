"""One structured-call path used by every agent and judge.

``structured_call(model, Schema, messages)`` asks the model for output matching a pydantic schema
and returns a validated object with a :class:`CallRecord` (model id, tokens, latency, attempts, raw
text) that feeds traces and benchmarks.

How structure is obtained is the backend's business, through the standard langchain-core contract
``model.with_structured_output(Schema, include_raw=True)`` → ``{"raw", "parsed", "parsing_error"}``:

* ``local`` (llama.cpp in process): JSON-schema grammar, so output always parses;
* ``openai`` (vLLM, OpenAI, llama.cpp server): ``json_schema`` → ``function_calling`` →
  ``json_mode``, chosen per server;
* ``scripted`` (tests): deterministic rules.

Validity is not repaired by hand. When the output fails validation (a grammar guarantees JSON, not
every pydantic constraint), the error is fed back to the model and the call retried, up to
``max_attempts``; then :class:`StructuredOutputError` is raised with the model id, the attempt count
and every raw output.

Errors raised by the model call itself (server unreachable, timeout, wrong model name, a schema
the backend cannot enforce) are already typed ``LLMError`` subclasses from the backends
(``llm.errors``); they are not retried here, because the backends retry transport errors with
backoff themselves and a rejected schema or model name does not get better by asking again.
``LLMError`` and ``StructuredOutputError`` live in ``llm.errors`` and are re-exported here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from pydantic import BaseModel, ValidationError

from llm.errors import LLMError, StructuredOutputError
from llm.schemas import raw_output_text, was_truncated, with_schema_hint
from llm.structured_cache import structured_runnable_for

T = TypeVar("T", bound=BaseModel)


@dataclass
class CallRecord:
    model_id: str
    schema: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    latency_s: float = 0.0
    attempts: int = 0
    raw: str = ""
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id, "schema": self.schema, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "cached_tokens": self.cached_tokens,
            "latency_s": round(self.latency_s, 4),
            "attempts": self.attempts, "raw": self.raw, "errors": list(self.errors),
        }


@dataclass
class StructuredResult(Generic[T]):
    value: T
    record: CallRecord


def model_id(model: BaseChatModel) -> str:
    for attr in ("model_id", "model_name", "model"):
        v = getattr(model, attr, None)
        if isinstance(v, str) and v:
            return v
    return type(model).__name__


def _raw_text(raw: Any) -> str:
    return raw_output_text(raw)


def _usage(raw: Any) -> tuple[int, int]:
    meta = getattr(raw, "usage_metadata", None) or {}
    return int(meta.get("input_tokens", 0) or 0), int(meta.get("output_tokens", 0) or 0)


def _cached(raw: Any) -> int:
    """Prompt tokens served from a prefix cache (llama.cpp KV reuse, OpenAI/vLLM cached tokens)."""
    meta = getattr(raw, "usage_metadata", None) or {}
    details = meta.get("input_token_details") or {}
    return int(details.get("cache_read", 0) or 0)


def _feedback(error: str) -> HumanMessage:
    return HumanMessage(
        content=f"Your previous answer was not valid: {error[:600]}\n"
        "Answer again with only a JSON object that matches the schema exactly."
    )


def _validate(schema: type[T], out: dict[str, Any]) -> tuple[T | None, str | None]:
    parsed, err = out.get("parsed"), out.get("parsing_error")
    if err is not None:
        return None, str(err)
    if parsed is None:
        text = _raw_text(out.get("raw"))
        try:
            return schema.model_validate_json(text), None
        except ValidationError as e:
            return None, str(e)
    if isinstance(parsed, schema):
        return parsed, None
    try:
        return schema.model_validate(parsed), None
    except ValidationError as e:
        return None, str(e)


class _Attempts(Generic[T]):
    """The bookkeeping shared by the sync and async loops: record usage, validate, build feedback."""

    def __init__(self, model: BaseChatModel, schema: type[T], messages: list[BaseMessage], max_attempts: int):
        self.model = model
        self.schema = schema
        self.max_attempts = max_attempts
        self.truncated = False
        self.record = CallRecord(model_id=model_id(model), schema=schema.__name__)
        # a template's schema marker (llm.schemas.SCHEMA_HINT_MARKER) is for the backends that place the
        # hint there; any other LangChain chat model gets the prompt without it
        self.history = list(messages) if getattr(model, "handles_schema_marker", False) else with_schema_hint(messages, None)
        self.raws: list[str] = []
        self.t0 = time.perf_counter()

    def step(self, attempt: int, out: dict[str, Any]) -> StructuredResult[T] | None:
        self.record.attempts = attempt
        raw = out.get("raw")
        text = _raw_text(raw)
        self.raws.append(text)
        self.truncated = was_truncated(raw)
        pt, ct = _usage(raw)
        self.record.prompt_tokens += pt
        self.record.completion_tokens += ct
        self.record.cached_tokens += _cached(raw)
        value, err = _validate(self.schema, out)
        self.record.latency_s = time.perf_counter() - self.t0
        if value is not None:
            self.record.raw = text
            return StructuredResult(value=value, record=self.record)
        self.record.errors.append(err or "unknown error")
        self.history = [*self.history, AIMessage(content=text), _feedback(err or "")]
        return None

    def fail(self) -> StructuredOutputError:
        hint = ""
        if self.truncated:  # the last answer stopped at max_tokens: say what to change, and where
            fn = getattr(self.model, "truncation_hint", None)
            hint = fn() if callable(fn) else "the answer stopped at max_tokens: raise INTENTREC_LLM_MAX_TOKENS"
        return StructuredOutputError(model=self.record.model_id, schema=self.schema.__name__,
                                     attempts=self.max_attempts, raw=self.raws, errors=self.record.errors, hint=hint)


def structured_call(
    model: BaseChatModel,
    schema: type[T],
    messages: list[BaseMessage],
    *,
    max_attempts: int = 3,
    runnable_config: dict[str, Any] | None = None,
) -> StructuredResult[T]:
    """Call ``model`` for a ``schema`` object; retry with the validation error fed back."""
    runnable = structured_runnable_for(model, schema)
    st = _Attempts(model, schema, messages, max_attempts)
    for attempt in range(1, max_attempts + 1):
        result = st.step(attempt, runnable.invoke(st.history, config=runnable_config))
        if result is not None:
            return result
    raise st.fail()


async def astructured_call(
    model: BaseChatModel,
    schema: type[T],
    messages: list[BaseMessage],
    *,
    max_attempts: int = 3,
    runnable_config: dict[str, Any] | None = None,
) -> StructuredResult[T]:
    """Async twin of :func:`structured_call` (for batch concurrency against a server)."""
    runnable = structured_runnable_for(model, schema)
    st = _Attempts(model, schema, messages, max_attempts)
    for attempt in range(1, max_attempts + 1):
        result = st.step(attempt, await runnable.ainvoke(st.history, config=runnable_config))
        if result is not None:
            return result
    raise st.fail()


__all__ = ["CallRecord", "LLMError", "StructuredOutputError", "StructuredResult", "astructured_call",
           "model_id", "structured_call"]
