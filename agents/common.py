"""What every agent shares: render a prompt from the registry, make one structured call, and return
the value with a compact call record for the trace (template ref, model, tokens, latency, attempts).

The rendered messages and the raw output are handed to an optional ``call_sink`` on the context
(``Context.extra["call_sink"]``), which the run log uses; graph state only keeps the compact record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel

from agents.context import Context
from llm.structured import structured_call

T = TypeVar("T", bound=BaseModel)


def call_agent(ctx: Context, *, node: str, role: str, template: str, schema: type[T],
               subject: str | None = None, **variables: Any) -> tuple[T, dict[str, Any]]:
    tmpl = ctx.prompts.get(template)
    messages = tmpl.render(**variables)
    t0 = time.perf_counter()
    try:
        res = structured_call(ctx.model(role), schema, messages, max_attempts=ctx.max_attempts)
    except Exception as e:
        _sink(ctx)(node=node, subject=subject, prompt=tmpl.ref, messages=messages, raw=getattr(e, "raw", None),
                   parsed=None, record=None, error=str(e), latency_s=time.perf_counter() - t0)
        raise
    rec = res.record
    stat = {
        "node": node, "role": role, "subject": subject, "prompt": tmpl.ref, "model": rec.model_id,
        "prompt_tokens": rec.prompt_tokens, "cached_tokens": rec.cached_tokens,
        "completion_tokens": rec.completion_tokens,
        "latency_s": round(rec.latency_s, 4), "attempts": rec.attempts,
    }
    _sink(ctx)(node=node, subject=subject, prompt=tmpl.ref, messages=messages, raw=rec.raw,
               parsed=res.value.model_dump(), record=stat, error=None, latency_s=rec.latency_s)
    return res.value, stat


def _noop(**_: Any) -> None:
    return None


def _sink(ctx: Context) -> Callable[..., None]:
    return ctx.extra.get("call_sink") or _noop
