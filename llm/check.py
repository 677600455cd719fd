"""``llm check``: one real structured call through the configured backend, with its measurements.

It builds the model from settings exactly as the graph does, makes one ``structured_call`` for a
small shopping-intent schema and reports validity, tokens in/out, decode tokens/s, load time, the
raw output and the parsed value. Socket connections opened during the check are counted with a
CPython audit hook (``socket.connect``), so "the embedded backend used no network" is measured,
not assumed.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Annotated, Any, Literal

from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel, Field

from llm.errors import LLMError, StructuredOutputError
from llm.settings import LLMSettings


class ShoppingIntent(BaseModel):
    """One shopping intent inferred from a short behaviour history."""

    intent: str = Field(max_length=80, description="what the shopper is trying to get done, in a few words")
    category: Literal["baby", "food", "home", "outdoor", "electronics", "clothing", "other"]
    tags: list[Annotated[str, Field(max_length=40)]] = Field(min_length=1, max_length=3,
                                                             description="item tags, each 'modifier + core word'")
    urgency: Literal["low", "medium", "high"]


CHECK_MESSAGES = [
    SystemMessage(content="You are a shopping assistant. Infer the shopper's current intent from their history."),
    HumanMessage(content="History: 2017-11(buy: diapers, baby wipes; cart: baby formula) | "
                         "2017-12(search: stroller; fav: infant car seat)"),
]


class _ConnectCounter:
    """Counts ``socket.connect`` audit events while active (audit hooks cannot be removed)."""

    _installed = False
    _active = 0
    _count = 0
    _lock = threading.Lock()

    @classmethod
    def _hook(cls, event: str, args: tuple[Any, ...]) -> None:
        if event == "socket.connect" and cls._active:
            with cls._lock:
                cls._count += 1

    def __enter__(self) -> _ConnectCounter:
        cls = type(self)
        if not cls._installed:
            sys.addaudithook(cls._hook)
            cls._installed = True
        with cls._lock:
            cls._active += 1
            self._start = cls._count
        return self

    def __exit__(self, *exc: Any) -> None:
        cls = type(self)
        with cls._lock:
            cls._active -= 1
            self.count = cls._count - self._start


def run_check(settings: LLMSettings, *, max_attempts: int = 3) -> dict[str, Any]:
    """Make the check call; never raises for model errors (they are reported in the result)."""
    from llm.factory import make_chat_model
    from llm.structured import structured_call

    out: dict[str, Any] = {"backend": settings.backend, "valid": False, "settings": settings.public_dict()}
    with _ConnectCounter() as net:
        try:
            t0 = time.perf_counter()
            extra: dict[str, Any] = {}
            if settings.backend == "scripted":  # no model: a canned valid answer exercises the path
                extra["default"] = ShoppingIntent(intent="prepare for the baby", category="baby",
                                                  tags=["organic baby formula"], urgency="high")
            model = make_chat_model(settings, **extra)
            if settings.backend == "local":
                model.loaded()  # type: ignore[attr-defined]
                out["load_s"] = round(model.load_s, 4)  # type: ignore[attr-defined]
                out["model_path"] = model.model_path  # type: ignore[attr-defined]
            elif settings.backend == "openai":
                out["base_url"] = settings.base_url
                out["structured_method"] = model.resolve_structured_method()  # type: ignore[attr-defined]
                out["load_s"] = round(time.perf_counter() - t0, 4)
            else:
                out["load_s"] = round(time.perf_counter() - t0, 4)
            out["model"] = getattr(model, "model_name", type(model).__name__)
            res = structured_call(model, ShoppingIntent, list(CHECK_MESSAGES), max_attempts=max_attempts)
            rec = res.record
            if settings.backend == "local" and rec.attempts == 1:
                from llm.local import _perf_prompt_eval_s

                pe = _perf_prompt_eval_s(model.llama)  # type: ignore[attr-defined]
                if pe is not None and rec.latency_s > pe:
                    out["prompt_eval_s"] = round(pe, 4)
                    out["decode_tokens_per_s"] = round(rec.completion_tokens / (rec.latency_s - pe), 2)
            out.update(valid=True, parsed=res.value.model_dump(), raw=rec.raw)
        except StructuredOutputError as e:
            rec = None
            out.update(raw=e.raw[-1] if e.raw else "", raw_all=e.raw, attempts=e.attempts,
                       error={"type": type(e).__name__, "message": str(e)})
        except LLMError as e:
            rec = None
            out["error"] = {"type": type(e).__name__, "message": str(e), "attempts": e.attempts, "raw": e.raw[-1:]}
    if rec is not None:
        out.update(prompt_tokens=rec.prompt_tokens, completion_tokens=rec.completion_tokens,
                   latency_s=round(rec.latency_s, 4), attempts=rec.attempts,
                   tokens_per_s=round(rec.completion_tokens / rec.latency_s, 2) if rec.latency_s > 0 else None)
    out["network_connects"] = net.count
    return out


def check_exit_code(result: dict[str, Any]) -> int:
    if result.get("valid"):
        return 0
    return 1 if (result.get("error") or {}).get("type") == "StructuredOutputError" else 2


__all__ = ["CHECK_MESSAGES", "ShoppingIntent", "check_exit_code", "run_check"]
