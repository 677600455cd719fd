"""Optional tracing callbacks: LangSmith, Langfuse, OpenTelemetry.

Off by default. ``make_callbacks(["otel", ...])`` (or ``INTENTREC_CALLBACKS=otel,...``) builds the
handlers that ``IntentRec`` adds to every graph call's ``config["callbacks"]``. Nothing is imported
for a backend that is not switched on, and a backend that is switched on but not installed is a
clear error naming the package to install.

* ``langsmith``: langchain-core's ``LangChainTracer`` (needs ``langsmith``; sends only when
  ``LANGSMITH_API_KEY`` is set, as LangSmith itself decides).
* ``langfuse``: ``langfuse.langchain.CallbackHandler`` (Langfuse v3; reads ``LANGFUSE_*``).
* ``otel``: :class:`OTelCallbackHandler` below, one span per chain / model run, nested as the graph
  nests them, on the global OpenTelemetry tracer provider. With only ``opentelemetry-api``
  installed the spans are no-ops, so switching it on needs no collector or account; install and
  configure ``opentelemetry-sdk`` with an exporter to ship them.
"""

from __future__ import annotations

import importlib.util
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

from runlog.settings import CALLBACK_NAMES, TraceSettings
from runlog.store import RunLogError


def _need(module: str, package: str, name: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise RunLogError(f"tracing callback {name!r} is switched on but {package!r} is not installed "
                          f"(pip install {package})")


def make_callbacks(names: list[str] | None = None, *, settings: TraceSettings | None = None,
                   tracer: Any = None) -> list[BaseCallbackHandler]:
    settings = settings or TraceSettings()
    names = settings.callback_names() if names is None else [n.strip().lower() for n in names if n.strip()]
    out: list[BaseCallbackHandler] = []
    for name in names:
        if name not in CALLBACK_NAMES:
            raise RunLogError(f"unknown tracing callback {name!r}; expected some of {CALLBACK_NAMES}")
        if name == "langsmith":
            _need("langsmith", "langsmith", name)
            from langchain_core.tracers.langchain import LangChainTracer

            out.append(LangChainTracer(project_name=settings.langsmith_project))
        elif name == "langfuse":
            _need("langfuse", "langfuse", name)
            from langfuse.langchain import CallbackHandler  # type: ignore[import-not-found]

            out.append(CallbackHandler())
        else:
            out.append(OTelCallbackHandler(tracer=tracer))
    return out


class OTelCallbackHandler(BaseCallbackHandler):
    """One OpenTelemetry span per LangChain run (graph, node, model call), parented like the runs.
    Attributes: ``langgraph.node``, token usage and errors. ``tracer`` defaults to the global
    provider's ``intentrec`` tracer."""

    raise_error = False

    def __init__(self, tracer: Any = None):
        if tracer is None:
            _need("opentelemetry", "opentelemetry-api", "otel")
            from opentelemetry import trace

            tracer = trace.get_tracer("intentrec")
        self.tracer = tracer
        self.spans: dict[UUID, Any] = {}

    def _start(self, run_id: UUID, parent_run_id: UUID | None, name: str, attrs: dict[str, Any]) -> None:
        from opentelemetry import trace

        parent = self.spans.get(parent_run_id) if parent_run_id else None
        ctx = trace.set_span_in_context(parent) if parent is not None else None
        span = self.tracer.start_span(name, context=ctx)
        for k, v in attrs.items():
            if isinstance(v, str | int | float | bool):
                span.set_attribute(k, v)
        self.spans[run_id] = span

    def _end(self, run_id: UUID, error: BaseException | None = None, attrs: dict[str, Any] | None = None) -> None:
        span = self.spans.pop(run_id, None)
        if span is None:
            return
        for k, v in (attrs or {}).items():
            span.set_attribute(k, v)
        if error is not None:
            span.record_exception(error)
            span.set_attribute("error", True)
        span.end()

    # chains (graph, nodes)
    def on_chain_start(self, serialized: dict[str, Any] | None, inputs: Any, *, run_id: UUID,
                       parent_run_id: UUID | None = None, metadata: dict[str, Any] | None = None,
                       **kwargs: Any) -> None:
        name = kwargs.get("name") or (serialized or {}).get("name") or "chain"
        meta = metadata or {}
        self._start(run_id, parent_run_id, str(name), {"langgraph.node": meta.get("langgraph_node", ""),
                                                       "intentrec.run_id": meta.get("intentrec_run_id", "")})

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, error)

    # model calls
    def on_chat_model_start(self, serialized: dict[str, Any] | None, messages: Any, *, run_id: UUID,
                            parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        name = kwargs.get("name") or (serialized or {}).get("name") or "chat_model"
        self._start(run_id, parent_run_id, f"llm {name}", {"gen_ai.operation.name": "chat"})

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        attrs: dict[str, Any] = {}
        try:
            usage = response.generations[0][0].message.usage_metadata or {}
            attrs = {"gen_ai.usage.input_tokens": int(usage.get("input_tokens", 0)),
                     "gen_ai.usage.output_tokens": int(usage.get("output_tokens", 0))}
        except (AttributeError, IndexError, TypeError):
            pass
        self._end(run_id, attrs=attrs)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, error)
