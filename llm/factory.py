"""One model factory: ``make_chat_model(settings)`` for the ``local``, ``openai`` and ``scripted`` backends.

Design decisions:

* Backends are imported lazily, so importing this module pulls in neither llama.cpp nor the openai
  client, and nothing anywhere imports vLLM (it is only ever a server at the other end of HTTP).
* ``openai`` without a ``model`` asks the server's ``GET /models`` once (bounded by ``timeout_s``)
  and uses the first id: ``vllm serve <model>`` and llama.cpp's server serve exactly one.
* ``make_role_models`` gives one model per agent role from ``settings.roles`` overrides; roles whose
  effective settings are identical share one object (and, for ``local``, one ``Llama`` anyway).
* ``ChatOpenAI`` is created with ``use_responses_api=False``: vLLM and llama.cpp speak Chat
  Completions, and the Responses API would bypass the structured-output path here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from langchain_core.language_models import BaseChatModel

from llm.errors import LLMConfigError, LLMConnectionError, LLMError, LLMServerError, LLMTimeoutError
from llm.settings import LLMSettings


def discover_model(settings: LLMSettings) -> str:
    """The first model id the server lists at ``{base_url}/models``."""
    import httpx

    url = f"{settings.base_url}/models"
    headers = {"Authorization": f"Bearer {settings.api_key_value()}"}
    last: Exception | None = None
    for _ in range(settings.max_retries + 1):
        try:
            r = httpx.get(url, headers=headers, timeout=settings.timeout_s)
            break
        except httpx.TimeoutException as e:
            raise LLMTimeoutError(f"no answer from {url} within {settings.timeout_s}s while looking up the served "
                                  "model; set INTENTREC_LLM_MODEL", attempts=1, base_url=settings.base_url) from e
        except httpx.TransportError as e:
            last = e
    else:
        raise LLMConnectionError(f"cannot connect to {settings.base_url} to look up the served model "
                                 f"({type(last).__name__}: {last}); is the server running?",
                                 attempts=settings.max_retries + 1, base_url=settings.base_url) from last
    if r.status_code != 200:
        raise LLMServerError(f"GET {url} answered HTTP {r.status_code}; set INTENTREC_LLM_MODEL explicitly",
                             raw=[r.text[:2000]], status=r.status_code)
    try:
        ids = [m["id"] for m in r.json().get("data", [])]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise LLMServerError(f"GET {url} did not return an OpenAI model list; set INTENTREC_LLM_MODEL",
                             raw=[r.text[:2000]]) from e
    if not ids:
        raise LLMServerError(f"{url} lists no models; set INTENTREC_LLM_MODEL", raw=[r.text[:2000]])
    return ids[0]


def make_local(settings: LLMSettings, **kwargs: Any) -> BaseChatModel:
    from llm.local import LocalChatModel

    args: dict[str, Any] = dict(n_ctx=settings.n_ctx, n_threads=settings.threads(), seed=settings.seed,
                                temperature=settings.temperature, max_tokens=settings.max_tokens,
                                schema_hint=settings.schema_hint, parallel_sequences=settings.parallel_sequences)
    gguf = settings.gguf_path()
    if gguf:
        args["model_path"] = gguf
    adapter = settings.adapter_path()
    if adapter:
        args["adapter"] = adapter
    return LocalChatModel(**{**args, **kwargs})


def make_openai(settings: LLMSettings, **kwargs: Any) -> BaseChatModel:
    from llm.openai_compat import OpenAICompatChatModel

    model = settings.model or discover_model(settings)
    args: dict[str, Any] = dict(
        model=model, base_url=settings.base_url, api_key=settings.api_key_value(), timeout=settings.timeout_s,
        max_retries=settings.max_retries, temperature=settings.temperature, max_tokens=settings.max_tokens,
        seed=settings.seed, structured_method=settings.structured_method, vllm=settings.vllm,
        schema_hint=settings.schema_hint, concurrency=settings.concurrency, use_responses_api=False,
    )
    return OpenAICompatChatModel(**{**args, **kwargs})


def make_scripted(settings: LLMSettings, **kwargs: Any) -> BaseChatModel:
    from llm.scripted import ScriptedChatModel

    return ScriptedChatModel(**kwargs)


_BACKENDS = {"local": make_local, "openai": make_openai, "scripted": make_scripted}


def make_chat_model(settings: LLMSettings | None = None, **kwargs: Any) -> BaseChatModel:
    """A langchain-core chat model for ``settings.backend``; ``kwargs`` go to the model's constructor
    (e.g. ``rules=[...]`` for ``scripted``)."""
    settings = settings or LLMSettings()
    maker = _BACKENDS.get(settings.backend)
    if maker is None:  # settings validation makes this unreachable unless constructed oddly
        raise LLMConfigError(f"unknown LLM backend {settings.backend!r}; use one of {sorted(_BACKENDS)}")
    try:
        return maker(settings, **kwargs)
    except LLMError:
        raise
    except (TypeError, ValueError) as e:
        raise LLMConfigError(f"cannot build the {settings.backend} model: {e}") from e


def make_role_models(settings: LLMSettings, roles: Iterable[str] = (), **kwargs: Any) -> dict[str, BaseChatModel]:
    """``{"default": model, role: model, ...}``; roles with the same effective settings share a model."""
    by_settings: dict[str, BaseChatModel] = {}
    out: dict[str, BaseChatModel] = {}
    for role in ["default", *roles, *settings.roles]:
        if role in out:
            continue
        eff = settings if role == "default" else settings.for_role(role)
        key = json.dumps(eff.model_dump(mode="json", exclude={"roles"}), sort_keys=True)
        if key not in by_settings:
            by_settings[key] = make_chat_model(eff, **kwargs)
        out[role] = by_settings[key]
    return out
