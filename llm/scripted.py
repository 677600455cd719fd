"""A deterministic chat model for unit tests and framework benchmarks (never the product).

langchain's ``GenericFakeChatModel`` cannot do ``with_structured_output``; this one can, and it also
supports ``bind_tools`` (tools are accepted and ignored). Responses come from, in order:

1. ``rules``: callables ``(messages, schema) -> response | None``; the first non-None answer wins;
2. ``responses``: a queue consumed one per call;
3. ``default``.

A response may be a pydantic object, a dict (dumped as JSON), or a string (returned as is: use it
to script garbage). Every call is recorded in ``calls`` (schema name and messages) so tests can count
them, e.g. to prove a judge replay made no generator calls. ``latency_s`` adds a fixed delay per call
(``time.sleep`` / ``asyncio.sleep``), for batch and concurrency tests.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable, RunnableLambda
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from llm.structured_cache import StructuredRunnables

Rule = Callable[[list[BaseMessage], type[BaseModel] | None], Any]


@dataclass
class ScriptedCall:
    schema: str | None
    messages: list[BaseMessage]

    @property
    def text(self) -> str:
        return "\n".join(str(m.content) for m in self.messages)


class ScriptedExhausted(RuntimeError):
    pass


def by_schema(schema: type[BaseModel] | str, response: Any) -> Rule:
    """A rule answering every call for ``schema`` with ``response`` (a value or a callable of the
    messages)."""
    name = schema if isinstance(schema, str) else schema.__name__

    def rule(messages: list[BaseMessage], s: type[BaseModel] | None) -> Any:
        if s is not None and s.__name__ == name:
            return response(messages) if callable(response) else response
        return None

    return rule


class ScriptedChatModel(BaseChatModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    #: sees the messages as the graph sends them, schema marker included, so a test can apply a real
    #: backend's ``prepare`` to what was logged (``llm.structured``)
    handles_schema_marker: ClassVar[bool] = True

    rules: list[Any] = Field(default_factory=list)
    responses: list[Any] = Field(default_factory=list)
    default: Any = None
    latency_s: float = 0.0
    model_name: str = "scripted"

    _calls: list[ScriptedCall] = PrivateAttr(default_factory=list)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)
    _schemas: dict[str, type[BaseModel]] = PrivateAttr(default_factory=dict)
    _structured_chains: StructuredRunnables = PrivateAttr(default_factory=StructuredRunnables)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    @property
    def calls(self) -> list[ScriptedCall]:
        return self._calls

    def calls_for(self, schema: type[BaseModel] | str) -> list[ScriptedCall]:
        name = schema if isinstance(schema, str) else schema.__name__
        return [c for c in self._calls if c.schema == name]

    # ----- core -------------------------------------------------------------------------------
    def _answer(self, messages: list[BaseMessage], schema_name: str | None) -> str:
        schema = self._schemas.get(schema_name) if schema_name else None
        with self._lock:
            self._calls.append(ScriptedCall(schema=schema_name, messages=list(messages)))
            resp = None
            for rule in self.rules:
                resp = rule(list(messages), schema)
                if resp is not None:
                    break
            if resp is None and self.responses:
                resp = self.responses.pop(0)
            if resp is None:
                resp = self.default
        if resp is None:
            raise ScriptedExhausted(f"scripted model has no response for schema {schema_name!r}")
        if isinstance(resp, BaseModel):
            return resp.model_dump_json()
        if isinstance(resp, dict | list):
            return json.dumps(resp, ensure_ascii=False)
        return str(resp)

    def _result(self, messages: list[BaseMessage], text: str) -> ChatResult:
        n_in = sum(len(str(m.content).split()) for m in messages)
        msg = AIMessage(
            content=text,
            usage_metadata={"input_tokens": n_in, "output_tokens": len(text.split()),
                            "total_tokens": n_in + len(text.split())},
            response_metadata={"model_name": self.model_name},
        )
        return ChatResult(generations=[ChatGeneration(message=msg)])

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        if self.latency_s:
            time.sleep(self.latency_s)
        return self._result(messages, self._answer(messages, kwargs.get("schema_name")))

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        return self._result(messages, self._answer(messages, kwargs.get("schema_name")))

    # ----- structured output / tools ----------------------------------------------------------
    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Runnable:
        return self.bind(**kwargs)

    def with_structured_output(self, schema: Any, *, include_raw: bool = False, **kwargs: Any) -> Runnable:
        if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
            raise TypeError("ScriptedChatModel supports pydantic schemas only")
        self._schemas[schema.__name__] = schema
        bound = self.bind(schema_name=schema.__name__)

        def parse(msg: AIMessage) -> Any:
            try:
                parsed = schema.model_validate_json(msg.content)
                err = None
            except ValidationError as e:
                parsed, err = None, e
            if include_raw:
                return {"raw": msg, "parsed": parsed, "parsing_error": err}
            if err is not None:
                raise err
            return parsed

        return bound | RunnableLambda(parse)
