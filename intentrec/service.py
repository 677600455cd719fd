"""``IntentRec``: the Python entry point. It owns the loaded dependencies (dataset, retriever, models,
prompt registry, checkpointer) and the compiled graph, and runs it for a user.

>>> rec = IntentRec.from_settings()                      # embedded model, completejourney
>>> out = rec.recommend("1", now="2017-10-01")           # dict: recommendations, personas, tags, ...
>>> for ns, update in rec.stream("1", now="2017-10-01"):  # stream_mode="updates", subgraphs=True
...     print(ns, list(update))

Context fields can be overridden per call (``rec.recommend(u, n_tags=4, beta=0.8)``), and so can the
prompt folder (``prompts_dir=...``).

With a run log (``runlog=RunLog(...)`` or a path; ``from_settings`` opens the default one unless
``INTENTREC_RUNLOG=0``), every ``recommend`` / ``stream`` is recorded by ``runlog.recorder`` (nodes,
model calls with rendered prompts, verdicts, recommendations) and the graph gets the SQLite
checkpointer beside the log, so ``fork`` can re-run a logged run from any node. Tracing callbacks
(LangSmith, Langfuse, OpenTelemetry) are added to every call's config when given or set in settings.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel

from agents.context import ROLES, Context, Environment
from behavior.schema import Dataset
from core.errors import IntentRecError
from graphs.recommend import build_graph, recursion_limit
from graphs.state import OutputState
from prompts.registry import PromptRegistry


def output_of(state: dict[str, Any]) -> dict[str, Any]:
    """The ``OutputState`` keys of a run's final state. ``invoke`` already returns only these; a
    recorded run streams the full internal state, so both paths go through here and give one shape."""
    return {k: state[k] for k in OutputState.__annotations__ if k in state}


class IntentRec:
    def __init__(self, *, dataset: Dataset, retriever: Any, models: dict[str, BaseChatModel],
                 prompts: PromptRegistry | None = None, checkpointer: Any = None,
                 count_tokens: Callable[[str], int] | None = None, runlog: Any = None,
                 callbacks: list[Any] | None = None, dataset_spec: str | None = None, **context_defaults: Any):
        self.dataset = dataset
        self.retriever = retriever
        self.models = models
        self.prompts = prompts or PromptRegistry()
        self.context_defaults = context_defaults
        self.dataset_spec = dataset_spec
        self.callbacks = list(callbacks or [])
        if runlog is not None and not hasattr(runlog, "start_run"):
            from runlog.store import RunLog

            runlog = RunLog(runlog)
        self.runlog = runlog
        if checkpointer is None and runlog is not None:
            checkpointer = runlog.checkpointer()
        self.checkpointer = checkpointer
        self.graph = build_graph(dataset=dataset, retriever=retriever, checkpointer=checkpointer,
                                 count_tokens=count_tokens)

    @classmethod
    def from_settings(cls, dataset: str | None = None, *, llm_settings: Any = None, retrieval_settings: Any = None,
                      prompts_dir: str | Path | None = None, checkpointer: Any = None, progress: bool = True,
                      runlog: Any = None, callbacks: list[Any] | None = None, **context_defaults: Any) -> IntentRec:
        """``runlog``: a ``RunLog``, a path, ``False`` (no log) or ``None`` (settings: on by default,
        ``INTENTREC_RUNLOG_PATH``); ``callbacks``: handlers, else those named by ``INTENTREC_CALLBACKS``."""
        from behavior.adapters import load_dataset_cached
        from llm.factory import make_chat_model
        from llm.settings import LLMSettings
        from retrieval.service import load_or_build_retriever
        from retrieval.text_encoder import TextEncoder

        llm_settings = llm_settings or LLMSettings()
        if llm_settings.backend == "scripted":  # checked first: before minutes of index building
            raise IntentRecError(
                "the scripted backend has no answers of its own, so no run could succeed: it is a test double. "
                "Build IntentRec(models={'default': ScriptedChatModel(rules=...)}) in Python (or pass --factory), "
                "or use --backend local or openai")
        ds = load_dataset_cached(dataset)
        encoder = TextEncoder()
        retriever = load_or_build_retriever(ds, settings=retrieval_settings, progress=progress, encoder=encoder)
        model = make_chat_model(llm_settings)
        prompts = PromptRegistry([prompts_dir] if prompts_dir else None)
        if llm_settings.small_model(getattr(model, "model_name", None)):
            context_defaults = {**small_model_profile(ds, encoder), **context_defaults}
        from runlog.callbacks import make_callbacks
        from runlog.settings import TraceSettings

        trace = TraceSettings()
        if runlog is None:
            runlog = trace.runlog_file() if trace.runlog else None
        return cls(dataset=ds, retriever=retriever, models={"default": model}, prompts=prompts,
                   checkpointer=checkpointer, runlog=runlog or None,
                   callbacks=callbacks if callbacks is not None else make_callbacks(settings=trace),
                   dataset_spec=dataset, **context_defaults)

    def context(self, *, now: datetime | str | None = None, prompts_dir: str | Path | None = None,
                **overrides: Any) -> Context:
        fields = {**self.context_defaults, **overrides}
        prompts = PromptRegistry([prompts_dir]) if prompts_dir else self.prompts
        env = fields.pop("env", None) or Environment.at(now if now is not None else self._default_now())
        return Context(models=self.models, prompts=prompts, env=env, **fields)

    def _default_now(self) -> datetime:
        """Default "now": the day after the dataset's last event, so the whole history is visible."""
        last = self.dataset.behaviors["ts"].max()
        return datetime(last.year, last.month, last.day) if last else datetime.now()

    def _config(self, ctx: Context, thread_id: str | None) -> dict[str, Any]:
        cfg: dict[str, Any] = {"configurable": {"thread_id": thread_id or uuid.uuid4().hex},
                               "recursion_limit": recursion_limit(ctx)}
        if self.callbacks:
            cfg["callbacks"] = list(self.callbacks)
        return cfg

    def _recorded(self, user_id: str, ctx: Context, thread_id: str | None, overrides: dict[str, Any],
                  run_id: str | None = None):
        from runlog.recorder import RecordedRun, jsonable_overrides
        from runlog.store import new_id

        run_id = run_id or new_id()
        return RecordedRun(self.runlog, self.graph, graph_input={"user_id": str(user_id), "run_id": run_id},
                           config=self._config(ctx, thread_id), ctx=ctx, run_id=run_id, user_id=str(user_id),
                           dataset=self.dataset_spec or self.dataset.name,
                           request={"now": ctx.env.now.isoformat(), "overrides": jsonable_overrides(overrides)})

    def recommend(self, user_id: str, *, thread_id: str | None = None, now: datetime | str | None = None,
                  run_id: str | None = None, **overrides: Any) -> dict[str, Any]:
        """Run the graph for ``user_id``. ``run_id``: the id to record the run under (a batch claims
        it before the run starts, so a resume can find the run); a new one by default."""
        ctx = self.context(now=now, **overrides)
        if self.runlog is not None:
            state = self._recorded(user_id, ctx, thread_id, overrides, run_id).run()
        else:
            state = self.graph.invoke({"user_id": str(user_id)}, config=self._config(ctx, thread_id), context=ctx)
        return output_of(state)

    def stream(self, user_id: str, *, thread_id: str | None = None, now: datetime | str | None = None,
               run_id: str | None = None, **overrides: Any) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
        ctx = self.context(now=now, **overrides)
        if self.runlog is not None:
            for ns, mode, data in self._recorded(user_id, ctx, thread_id, overrides, run_id).events():
                if mode == "updates":
                    yield ns, data
            return
        yield from self.graph.stream({"user_id": str(user_id)}, config=self._config(ctx, thread_id), context=ctx,
                                     stream_mode="updates", subgraphs=True)

    def fork(self, run_id: str, *, node: str, edit: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
        """Re-run a logged run from the checkpoint before ``node`` with ``edit`` applied to the state;
        recorded as a new run linked to the original (``runlog.fork``). Returns the graph output."""
        from runlog.fork import fork_run

        return fork_run(self, run_id, node=node, edit=edit or {}, **overrides)


def small_model_profile(dataset: Dataset, encoder: Any) -> dict[str, Any]:
    """Context defaults for the embedded local model (SmolLM2-135M): catalogue-constrained tags, the
    semantic judge profile (rules + embedding evaluators instead of LLM judge calls), facts lines as
    explanations and the compact prompt (``agents.context.SMALL_MODEL_PROMPT``). A 135M model writes
    junk tags when free, cannot discriminate as a judge
    (measured; see judges/semantic.py and agents/expert.py), and its explanations copy the prompt's
    example or loop, with or without the example, so the judge rejected every one it wrote
    (docs/graph.md): 16 model calls per user whose output was always thrown away. Any explicit
    override wins (``explanations="llm"`` brings the explainer agent back)."""
    from agents.context import SMALL_MODEL_PROMPT
    from judges.semantic import SemanticJudge, catalogue_vocabulary

    return {**SMALL_MODEL_PROMPT, "tag_vocabulary": "catalogue", "judge_profile": "semantic", "explanation_fallback": "facts",
            "explanations": "facts", "persona_source": "categories",
            "semantic_judge": SemanticJudge(encoder, catalogue_vocabulary(dataset))}


def build_app(store: Any, *, dataset: str | None, factory: str | None, backend: str | None = None,
              model: str | None = None, base_url: str | None = None) -> Any:
    from runlog.cli_options import load_factory

    """The ``IntentRec`` a command runs on: ``--factory module:function(RunLog)`` (``INTENTREC_FACTORY``),
    else ``IntentRec.from_settings`` for ``dataset`` with these backend options, logging to ``store``."""
    fn = load_factory(factory)
    if fn is not None:
        return fn(store)
    from llm.cli_options import llm_overrides
    from llm.settings import LLMSettings

    opts = llm_overrides(backend, base_url, model)
    return IntentRec.from_settings(dataset, llm_settings=LLMSettings(**opts), runlog=store, progress=False)


__all__ = ["IntentRec", "ROLES", "build_app", "small_model_profile"]
