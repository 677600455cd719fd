"""The server backend: any OpenAI-compatible endpoint (vLLM, OpenAI, ``python -m llama_cpp.server``)
through ``langchain_openai.ChatOpenAI``.

Design decisions:

* **A thin subclass of ChatOpenAI.** Requests, retries and usage accounting stay ChatOpenAI's
  (and the openai client's: exponential backoff with jitter on connection errors, timeouts, 408,
  409, 429 and 5xx, ``max_retries`` times). The subclass adds four things: typed errors, a
  structured-output path that works on servers that are not OpenAI, a concurrency limit, and
  ``max_tokens`` on the wire.
* **``max_tokens`` on the wire.** ChatOpenAI sends ``max_completion_tokens``; llama.cpp's server
  ignores that name, so its chat endpoint would generate until the context is full. ``max_tokens`` is understood by
  vLLM, llama.cpp and OpenAI's non-reasoning models; ``max_tokens_param`` switches it back.
* **Structured output, one method per server.** Methods in order of preference:
  ``json_schema`` (``response_format`` with the schema), ``function_calling`` (one forced tool
  whose parameters are the schema), ``json_mode`` (``{"type": "json_object"}``; the schema is only
  in the prompt). ``structured_method`` pins one; with ``auto`` the server is *probed once per
  (base_url, model)* with a tiny fixed schema and ``max_retries=0`` (its own short backoff loop on
  connection errors only), and the first method that the server both accepts and visibly honours
  is cached for the process. Probing with a fixed schema keeps the choice independent of any one
  agent's schema. Measured: llama.cpp's server answers ``json_schema`` with HTTP 500 (its request
  model only knows ``text``/``json_object``) and honours forced function calls, so it lands on
  ``function_calling``.
* **vLLM, detected.** With ``structured_method=auto`` the server's ``GET /models`` is read once per
  base URL (``owned_by: "vllm"`` marks a vLLM server); on vLLM, or with ``vllm=True``, the schema
  goes in ``extra_body={"structured_outputs": {"json": schema}}`` (vLLM >= 0.12) and the JSON comes
  back as the message text. ``guided_json`` is never sent: vLLM >= 0.12 ignores it with only a
  warning and returns unconstrained text. Nothing here imports vLLM.
* **Concurrency follows the server.** ``concurrency=None`` (the default) allows 4 requests in flight,
  or :data:`VLLM_CONCURRENCY` on a vLLM server, which batches concurrent requests (continuous
  batching) instead of queueing them.
* **A cut-off answer names its fix.** When a structured answer stops at ``max_tokens``,
  :meth:`OpenAICompatChatModel.truncation_hint` says so with the server and model; on vLLM it names
  the server flag without which a small model pads JSON with whitespace until the limit.
* **Typed errors, nothing hangs.** Every openai/httpx failure is mapped once, in ``_generate`` /
  ``_agenerate``, to an ``llm.errors`` type naming the model, base URL, attempts and the server's
  body. Every request has ``timeout_s``; a truncated answer (``finish_reason=length``, which the
  openai client's parse path raises as ``LengthFinishReasonError``) is returned as a normal message
  so the structured-call loop reports it as invalid output instead of crashing. A request the server
  refuses under a structured method raises :class:`SchemaNotSupportedError` with a hint.
* **Concurrency.** At most ``concurrency`` requests per model object are in flight (a thread
  semaphore for sync calls, one asyncio semaphore per event loop for async ones).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import openai
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langchain_openai import ChatOpenAI
from pydantic import PrivateAttr

from llm.errors import (
    ContextLengthError,
    LLMAuthError,
    LLMConnectionError,
    LLMError,
    LLMServerError,
    LLMTimeoutError,
    ModelNotFoundError,
    SchemaNotSupportedError,
    _clip,
)
from llm.schemas import (
    for_xgrammar,
    inline_refs,
    json_schema_of,
    schema_hint_text,
    schema_name,
    structured_runnable,
    with_schema_hint,
)
from llm.structured_cache import StructuredRunnables

Method = Literal["auto", "json_schema", "function_calling", "json_mode"]
METHOD_ORDER: tuple[str, ...] = ("json_schema", "function_calling", "json_mode")

_DETECTED: dict[tuple[str, str], str] = {}
_SERVER_KIND: dict[str, str] = {}
_DETECT_LOCK = threading.Lock()
#: requests in flight against a vLLM server when ``concurrency`` is not set (it batches them)
VLLM_CONCURRENCY = 32
DEFAULT_CONCURRENCY = 4

_PROBE_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
_SCHEMA_WORDS = ("response_format", "json_schema", "schema", "grammar", "structured", "tool", "function",
                 "json_object", "guided", "xgrammar", "outlines")


def detected_methods() -> dict[tuple[str, str], str]:
    """The structured-output method chosen per (base_url, model) in this process."""
    with _DETECT_LOCK:
        return dict(_DETECTED)


def forget_detected_methods() -> None:
    with _DETECT_LOCK:
        _DETECTED.clear()
        _SERVER_KIND.clear()


# ----- error mapping ---------------------------------------------------------------------------------

def _body_text(e: Exception) -> str:
    resp = getattr(e, "response", None)
    if resp is not None:
        try:
            return resp.text
        except Exception:  # a streamed or closed response
            pass
    body = getattr(e, "body", None)
    if body is not None:
        return body if isinstance(body, str) else json.dumps(body, ensure_ascii=False, default=str)
    return str(e)


def _server_message(e: Exception) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return str(getattr(e, "message", None) or e)


def map_openai_error(e: BaseException, *, model: str, base_url: str, max_retries: int, timeout_s: float | None,
                     method: str | None = None, schema: str = "", available: list[str] | None = None) -> LLMError:
    """One typed, self-explaining :class:`LLMError` for an openai-client exception."""
    if isinstance(e, LLMError):
        return e
    tries = max_retries + 1
    if isinstance(e, openai.APITimeoutError):
        return LLMTimeoutError(
            f"no answer from {base_url} for model {model!r} within {timeout_s}s "
            f"(tried {tries} time(s)); the server is overloaded or stuck, or timeout_s is too short",
            model=model, attempts=tries, base_url=base_url)
    if isinstance(e, openai.APIConnectionError):
        cause = e.__cause__ or e.__context__
        why = f"{type(cause).__name__}: {cause}" if cause else str(e)
        return LLMConnectionError(
            f"cannot connect to {base_url} for model {model!r} after {tries} attempt(s): {_clip(why, 200)}; "
            "is the server running, and is base_url right (it usually ends with /v1)?",
            model=model, attempts=tries, base_url=base_url)
    if not isinstance(e, openai.APIStatusError):
        return LLMError(f"call to {base_url} for model {model!r} failed: {type(e).__name__}: {e}",
                        model=model, attempts=1)
    status = e.status_code
    body = _body_text(e)
    msg = _server_message(e)
    attempts = tries if status in (408, 409, 429) or status >= 500 else 1
    low = msg.lower()
    if isinstance(e, openai.NotFoundError | openai.UnprocessableEntityError | openai.BadRequestError) and (
            "model" in low and ("not exist" in low or "not found" in low or "model_not_found" in body.lower()
                                or "does not exist" in low)):
        offer = f"; the server offers {available}" if available else ""
        return ModelNotFoundError(f"model {model!r} is not served at {base_url} (HTTP {status}: {_clip(msg, 200)}){offer}",
                                  model=model, attempts=attempts, raw=[body], available=available)
    if isinstance(e, openai.NotFoundError):
        return LLMServerError(f"HTTP 404 from {base_url} for model {model!r}: {_clip(msg, 200)}; check base_url "
                              "(an OpenAI-compatible API usually lives under /v1)",
                              model=model, attempts=attempts, raw=[body], status=status)
    if isinstance(e, openai.AuthenticationError | openai.PermissionDeniedError):
        return LLMAuthError(f"{base_url} refused the API key for model {model!r} (HTTP {status}: {_clip(msg, 200)}); "
                            "set INTENTREC_LLM_API_KEY", model=model, attempts=attempts, raw=[body])
    if any(w in low for w in ("context length", "context_length", "context window", "too long",
                              "maximum context", "exceed")) and "token" in low:
        return ContextLengthError(f"prompt does not fit model {model!r} at {base_url}: {_clip(msg, 300)}",
                                  model=model, attempts=attempts, raw=[body])
    if method and status in (400, 422, 500, 501) and any(w in low or w in body.lower() for w in _SCHEMA_WORDS):
        other = [m for m in METHOD_ORDER if m != method]
        return SchemaNotSupportedError(
            f"{base_url} cannot enforce schema {schema!r} with structured method {method!r} for model {model!r} "
            f"(HTTP {status}: {_clip(msg, 300)}); try INTENTREC_LLM_STRUCTURED_METHOD={' or '.join(other)} "
            "or simplify the schema", model=model, attempts=attempts, raw=[body], schema=schema, method=method)
    return LLMServerError(f"HTTP {status} from {base_url} for model {model!r}: {_clip(msg, 300)}",
                          model=model, attempts=attempts, raw=[body], status=status)


# ----- the model -------------------------------------------------------------------------------------

class OpenAICompatChatModel(ChatOpenAI):
    """ChatOpenAI for any OpenAI-compatible server, with typed errors and portable structured output."""

    #: puts the schema hint at the template's marker itself (``_own_kwargs``; see ``llm.structured``)
    handles_schema_marker: ClassVar[bool] = True

    structured_method: Method = "auto"
    vllm: bool = False
    schema_hint: bool = True
    concurrency: int | None = None
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"

    _sem: Any = PrivateAttr(default=None)
    _asems: Any = PrivateAttr(default=None)
    _guard: Any = PrivateAttr(default_factory=threading.Lock)
    _structured_chains: StructuredRunnables = PrivateAttr(default_factory=StructuredRunnables)

    # ----- identity -------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return str(self.openai_api_base or "https://api.openai.com/v1")

    @property
    def timeout_s(self) -> float | None:
        t = self.request_timeout
        return t if isinstance(t, int | float) else None

    def _map(self, e: BaseException, *, method: str | None = None, schema: str = "") -> LLMError:
        available = self.served_models() if isinstance(e, openai.NotFoundError) else None
        return map_openai_error(e, model=self.model_name, base_url=self.base_url, max_retries=self.max_retries or 0,
                                timeout_s=self.timeout_s, method=method, schema=schema, available=available)

    def served_models(self) -> list[str]:
        """Best effort: the model ids the server lists (empty when it cannot say quickly)."""
        try:
            client = self.root_client.with_options(max_retries=0, timeout=min(5.0, self.timeout_s or 5.0))
            return [m.id for m in client.models.list().data][:20]
        except Exception:
            return []

    def server_kind(self) -> str:
        """``vllm`` when the server's model list says ``owned_by: "vllm"`` (or ``vllm=True``), else
        ``openai-compatible``; read once per base URL, best effort (an unreachable server is left to
        the request itself to report)."""
        if self.vllm:
            return "vllm"
        with _DETECT_LOCK:
            hit = _SERVER_KIND.get(self.base_url)
        if hit:
            return hit
        try:
            client = self.root_client.with_options(max_retries=0, timeout=min(5.0, self.timeout_s or 5.0))
            owners = {getattr(m, "owned_by", None) for m in client.models.list().data}
        except Exception:
            return "openai-compatible"  # not cached: the server may come up later
        kind = "vllm" if "vllm" in owners else "openai-compatible"
        with _DETECT_LOCK:
            _SERVER_KIND[self.base_url] = kind
        return kind

    def max_in_flight(self) -> int:
        if self.concurrency is not None:
            return max(1, self.concurrency)
        return VLLM_CONCURRENCY if self.server_kind() == "vllm" else DEFAULT_CONCURRENCY

    def truncation_hint(self) -> str:
        """What to change when a structured answer stopped at ``max_tokens``."""
        where = f"{self.base_url} (model {self.model_name!r})"
        if self.server_kind() == "vllm":
            from llm.vllm_server import WHITESPACE_FLAG

            return (f"{where} is vLLM and stopped at max_tokens={self.max_tokens}: if the answer is mostly "
                    f"newlines or spaces, the server was started without {WHITESPACE_FLAG}; otherwise raise "
                    "INTENTREC_LLM_MAX_TOKENS")
        return f"{where} stopped at max_tokens={self.max_tokens}: raise INTENTREC_LLM_MAX_TOKENS"

    # ----- concurrency ----------------------------------------------------------------------------
    # The limit is computed outside the guard (it may read the server's model list once).
    def _thread_sem(self) -> threading.BoundedSemaphore:
        if self._sem is None:
            n = self.max_in_flight()
            with self._guard:
                if self._sem is None:
                    self._sem = threading.BoundedSemaphore(n)
        return self._sem

    async def _loop_sem(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        sem = self._asems.get(loop) if self._asems is not None else None
        if sem is not None:
            return sem
        n = await asyncio.to_thread(self.max_in_flight)
        with self._guard:
            if self._asems is None:
                self._asems = weakref.WeakKeyDictionary()
            sem = self._asems.get(loop)
            if sem is None:
                sem = self._asems[loop] = asyncio.Semaphore(n)
            return sem

    # ----- requests -------------------------------------------------------------------------------
    def _get_request_payload(self, input_: Any, *, stop: list[str] | None = None, **kwargs: Any) -> dict:
        payload = super()._get_request_payload(input_, stop=stop, **kwargs)
        if self.max_tokens_param == "max_tokens" and "max_completion_tokens" in payload:
            payload["max_tokens"] = payload.pop("max_completion_tokens")
        return payload

    @staticmethod
    def _own_kwargs(messages: list[BaseMessage], kwargs: dict[str, Any]) -> tuple[list[BaseMessage], str | None, str]:
        method = kwargs.pop("intentrec_method", None)
        schema = kwargs.pop("intentrec_schema", "")
        hint = kwargs.pop("intentrec_schema_hint", None)
        return with_schema_hint(messages, hint), method, schema

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        messages, method, schema = self._own_kwargs(messages, kwargs)
        with self._thread_sem():
            try:
                return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)
            except openai.LengthFinishReasonError as e:
                return self._create_chat_result(e.completion)
            except (openai.APIError, LLMError) as e:
                raise self._map(e, method=method, schema=schema) from e

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        messages, method, schema = self._own_kwargs(messages, kwargs)
        async with await self._loop_sem():
            try:
                return await super()._agenerate(messages, stop=stop, run_manager=run_manager, **kwargs)
            except openai.LengthFinishReasonError as e:
                return self._create_chat_result(e.completion)
            except (openai.APIError, LLMError) as e:
                available = await asyncio.to_thread(self.served_models) if isinstance(e, openai.NotFoundError) else None
                raise map_openai_error(e, model=self.model_name, base_url=self.base_url,
                                       max_retries=self.max_retries or 0, timeout_s=self.timeout_s, method=method,
                                       schema=schema, available=available) from e

    # ----- structured-output method ---------------------------------------------------------------
    def resolve_structured_method(self) -> str:
        """The method this server gets: pinned, vLLM's ``structured_outputs``, or probed once."""
        if self.structured_method != "auto":
            return self.structured_method
        key = (self.base_url, self.model_name)
        if self.server_kind() == "vllm":
            with _DETECT_LOCK:
                _DETECTED[key] = "vllm"
            return "vllm"
        with _DETECT_LOCK:
            hit = _DETECTED.get(key)
        if hit:
            return hit
        accepted: list[str] = []
        refused: list[str] = []
        chosen = None
        for method in METHOD_ORDER:
            verdict, detail = self._probe(method)
            if verdict == "ok":
                chosen = method
                break
            if verdict == "accepted":
                accepted.append(method)
            else:
                refused.append(f"{method}: {detail}")
        if chosen is None:
            if not accepted:
                raise SchemaNotSupportedError(
                    f"{self.base_url} refused every structured-output method for model {self.model_name!r}: "
                    + " | ".join(refused), model=self.model_name, attempts=len(METHOD_ORDER),
                    raw=refused, method="auto")
            chosen = accepted[0]  # accepted but not visibly honoured by the probe: best we have
        with _DETECT_LOCK:
            _DETECTED[key] = chosen
        return chosen

    def _probe(self, method: str) -> tuple[str, str]:
        """One tiny request: ``ok`` (accepted and honoured), ``accepted`` or ``refused``."""
        req: dict[str, Any] = {
            "model": self.model_name,
            "messages": [{"role": "user", "content": 'Reply with the JSON object {"ok": true} and nothing else.'}],
            self.max_tokens_param: 16,
        }
        if method == "json_schema":
            req["response_format"] = {"type": "json_schema",
                                      "json_schema": {"name": "probe", "schema": _PROBE_SCHEMA}}
        elif method == "function_calling":
            req["tools"] = [{"type": "function", "function": {"name": "probe", "description": "Report ok.",
                                                              "parameters": _PROBE_SCHEMA}}]
            req["tool_choice"] = {"type": "function", "function": {"name": "probe"}}
        else:
            req["response_format"] = {"type": "json_object"}
        client = self.root_client.with_options(max_retries=0, timeout=self.request_timeout)
        retries = self.max_retries or 0
        for attempt in range(retries + 1):
            try:
                resp = client.chat.completions.create(**req)
                break
            except openai.APIConnectionError as e:
                if attempt >= retries:
                    raise self._map(e) from e
                time.sleep(min(0.5 * 2 ** attempt, 4.0))
            except openai.APIStatusError as e:
                mapped = self._map(e)
                if isinstance(mapped, ModelNotFoundError | LLMAuthError):
                    raise mapped from e
                if e.status_code in (400, 422, 500, 501):
                    return "refused", f"HTTP {e.status_code}: {_clip(_server_message(e), 160)}"
                raise mapped from e
        choice = resp.choices[0]
        msg = choice.message
        if method == "function_calling":
            return ("ok", "") if msg.tool_calls else ("accepted", "no tool call in the answer")
        try:
            ok = isinstance(json.loads((msg.content or "").strip()), dict)
        except json.JSONDecodeError:
            ok = False
        if not ok and choice.finish_reason == "length":
            return "accepted", "answer cut off"
        return ("ok", "") if ok else ("accepted", f"answer is not a JSON object: {_clip(msg.content or '', 80)!r}")

    # ----- structured output ----------------------------------------------------------------------
    def structured_model(self, schema: Any, method: str) -> Runnable:
        """This model bound to produce ``schema`` with ``method`` (raw AIMessage out)."""
        sd = json_schema_of(schema)
        name = schema_name(schema)
        safe = re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:64] or "Output"
        hint = schema_hint_text(sd) if (self.schema_hint or method == "json_mode") else None
        own = {"intentrec_method": method, "intentrec_schema": name, "intentrec_schema_hint": hint,
               "ls_structured_output_format": {"kwargs": {"method": method}, "schema": sd}}
        if method == "json_schema":
            return self.bind(response_format={"type": "json_schema", "json_schema": {"name": safe, "schema": sd}}, **own)
        if method == "function_calling":
            tool = {"type": "function", "function": {"name": safe, "description": (sd.get("description") or
                    f"Return the {name}.")[:1000], "parameters": inline_refs(sd)}}
            return self.bind(tools=[tool], tool_choice={"type": "function", "function": {"name": safe}}, **own)
        if method == "json_mode":
            return self.bind(response_format={"type": "json_object"}, **own)
        if method == "vllm":  # xgrammar refuses pattern + length bounds on one string
            return self.bind(extra_body={**(self.extra_body or {}),
                                         "structured_outputs": {"json": for_xgrammar(sd)}}, **own)
        raise ValueError(f"unknown structured-output method {method!r}")

    def with_structured_output(self, schema: Any = None, *, method: str | None = None, include_raw: bool = False,
                               strict: bool | None = None, tools: Sequence[Any] | None = None,
                               **kwargs: Any) -> Runnable:
        json_schema_of(schema)  # reject unsupported schema types now

        def pick() -> str:
            return method or self.resolve_structured_method()

        def run(inp: Any, config: RunnableConfig) -> Any:
            return structured_runnable(self.structured_model(schema, pick()), schema,
                                       include_raw=include_raw).invoke(inp, config)

        async def arun(inp: Any, config: RunnableConfig) -> Any:
            m = method or await asyncio.to_thread(self.resolve_structured_method)
            return await structured_runnable(self.structured_model(schema, m), schema,
                                             include_raw=include_raw).ainvoke(inp, config)

        return RunnableLambda(run, afunc=arun, name=f"structured_{schema_name(schema)}")
