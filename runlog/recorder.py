"""Recording one graph run into the run log while it streams.

:class:`RecordedRun` wraps ``graph.stream(..., stream_mode=["updates", "tasks", "checkpoints",
"values"], subgraphs=True, durability="sync")`` and writes, as each event arrives:

* ``tasks`` events → one ``tasks`` row per node or subgraph-node task: start and end time, parent
  task (a subgraph's tasks hang under the parent node's task, from the namespace
  ``judge_tags:<task id>``), the input by reference (the checkpoint it read) plus a compact copy of
  ``Send`` payloads, a compact copy of its writes, its error;
* ``checkpoints`` events → the run's last top-level checkpoint id (what ``--fork`` starts from);
* top-level task results → the judge's requests and verdicts per judge pass (the ``graph`` verdict
  set), the recommendations and output summary (from ``emit``);
* the call sink (``Context.extra["call_sink"]``, called by ``agents.common.call_agent`` and the
  judge evaluators) → one ``calls`` row per model call with the rendered prompt messages, template
  ref, raw and parsed output, attempts, tokens, latency and error. The sink finds its task through
  LangGraph's run-time config (``langgraph_checkpoint_ns``), so calls attach to the exact task.

``durability="sync"`` makes LangGraph persist each checkpoint before the next step starts, so a
crashed run can still be forked (resumed) from its last step.

The recorder never raises into the graph: a failed write is logged and the run goes on.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import structlog

from runlog.store import RunLog, compact, plain

log = structlog.get_logger("intentrec.runlog")

STREAM_MODES = ["updates", "tasks", "checkpoints", "values"]


def describe_context(ctx: Any) -> dict[str, Any]:
    """What a run was configured with: models per role, prompt templates (name, version, hash,
    path), prompt folders, sizes and the environment."""
    from agents.context import ROLES
    from llm.structured import model_id

    models: dict[str, str | None] = {}
    for role in ROLES:
        try:
            models[role] = model_id(ctx.model(role))
        except KeyError:
            models[role] = None
    sizes = {k: getattr(ctx, k) for k in ("n_personas", "n_tags", "tags_per_expert", "tags_only", "items_per_tag", "n_items", "beta", "discovery_share", "regen_limit",
                                          "judge_mode", "judge_s_threshold", "max_attempts", "history_budget",
                                          "recent_days", "fallback_collaborative") if hasattr(ctx, k)}
    for k in ("tag_vocabulary", "catalogue_size", "evidence_per_tool", "persona_source", "explanations", "judge_profile"):
        if hasattr(ctx, k):
            sizes[k] = getattr(ctx, k)
    return {
        "models": models,
        "prompts": ctx.prompts.refs(),
        "prompt_dirs": [str(d) for d in ctx.prompts.dirs],
        "settings": plain(sizes),
        "env": {"now": ctx.env.now.isoformat(), "season": ctx.env.season, "holidays": list(ctx.env.holidays)},
    }


def jsonable_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """Per-call overrides as JSON (what a fork rebuilds its context from)."""
    out: dict[str, Any] = {}
    for k, v in overrides.items():
        if k in ("env", "extra", "models", "prompts", "semantic_judge"):
            continue  # live objects: the fork uses the IntentRec's own
        out[k] = plain(v)
    return out


class Recorder:
    """Turns stream events and sink calls of one run into run log rows."""

    def __init__(self, store: RunLog, run_id: str, *, graph_set_id: str | None = None):
        self.store = store
        self.run_id = run_id
        self.graph_set_id = graph_set_id
        self.seq = 0
        self.started: dict[str, float] = {}
        self.last_checkpoint: dict[str, str] = {}
        self.pending_requests: list[Any] = []
        self.pass_no = 0
        self.output: dict[str, Any] = {}
        self.summary: dict[str, Any] = {}

    def _safe(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # never break the graph because of the log
            with contextlib.suppress(Exception):  # nor because a logging sink is gone
                log.error("run log write failed", run_id=self.run_id, error=f"{type(e).__name__}: {e}")
            return None

    # ----- model calls --------------------------------------------------------------------------
    def on_call(self, *, node: str | None = None, subject: str | None = None, prompt: dict[str, Any] | None = None,
                messages: Any = None, raw: str | None = None, parsed: Any = None, record: dict[str, Any] | None = None,
                error: str | None = None, latency_s: float | None = None, **_: Any) -> None:
        task_path = None
        try:
            from langgraph.config import get_config

            task_path = get_config().get("metadata", {}).get("langgraph_checkpoint_ns")
        except Exception:  # outside a graph (replay): no task
            task_path = None
        self._safe(self.store.add_call, self.run_id, node=node, subject=subject, prompt=prompt,
                   messages=messages, raw=raw, parsed=parsed, record=record, error=error,
                   latency_s=latency_s, task_path=task_path)

    # ----- stream events ------------------------------------------------------------------------
    def on_event(self, ns: tuple[str, ...], mode: str, data: Any) -> None:
        if mode == "checkpoints":
            cfg = (data.get("config") or {}).get("configurable") or {}
            key = "|".join(ns)
            if cfg.get("checkpoint_id"):
                self.last_checkpoint[key] = cfg["checkpoint_id"]
                if not ns:
                    self._safe(self.store.set_checkpoint, self.run_id, cfg["checkpoint_id"])
        elif mode == "tasks":
            self._safe(self._on_task, ns, data)
        elif mode == "values" and not ns and isinstance(data, dict):
            self.output = data

    def _on_task(self, ns: tuple[str, ...], data: dict[str, Any]) -> None:
        task_id = data.get("id")
        name = data.get("name", "?")
        if "input" in data:  # task start
            self.seq += 1
            self.started[task_id] = time.perf_counter()
            key = "|".join(ns)
            parent = ns[-1].partition(":")[2] if ns else None
            pushed = "__pregel_push" in (data.get("triggers") or ())
            self.store.task_started(
                self.run_id, task_id=task_id, seq=self.seq, node=name, namespace=key, parent_task_id=parent,
                input_ref={"checkpoint_ns": key, "checkpoint_id": self.last_checkpoint.get(key)},
                input_=compact(data["input"], max_str=200, max_items=20) if pushed else None)
            return
        t0 = self.started.pop(task_id, None)
        error = data.get("error")
        result = data.get("result")
        self.store.task_finished(self.run_id, task_id=task_id,
                                 wall_s=None if t0 is None else time.perf_counter() - t0,
                                 result=compact(result, max_str=400, max_items=60),
                                 error=None if error is None else str(error)[:2000])
        if not ns and isinstance(result, dict):
            self._on_top_level_result(name, result)

    def _on_top_level_result(self, name: str, result: dict[str, Any]) -> None:
        if "judge_requests" in result:
            self.pending_requests = list(result.get("judge_requests") or [])
        if "verdicts" in result and self.graph_set_id:
            self.pass_no += 1
            by_id = {plain(r).get("subject_id"): r for r in self.pending_requests}
            rows = [{"subject_id": sid, "node": name, "request": by_id.get(sid), "verdict": v}
                    for sid, v in (result.get("verdicts") or {}).items()]
            self.store.add_judgements(self.graph_set_id, self.pass_no, rows)
        if "recommendations" in result:
            self.store.set_recommendations(self.run_id, plain(result["recommendations"]) or [])
        for k in ("status", "fallback", "personas", "tags", "node_totals"):
            if k in result:
                self.summary[k] = plain(result[k])
        if "drops" in result:
            self.summary.setdefault("drops", []).extend(plain(result["drops"]) or [])


class RecordedRun:
    """One recorded execution of a compiled graph. Iterate :meth:`events`; afterwards ``output``
    holds the graph's final output (what ``invoke`` returns)."""

    def __init__(self, store: RunLog, graph: Any, *, graph_input: Any, config: dict[str, Any], ctx: Any,
                 run_id: str, user_id: str | None, dataset: str | None, kind: str = "recommend",
                 parent_run_id: str | None = None, request: dict[str, Any] | None = None,
                 fork: dict[str, Any] | None = None):
        from llm.structured import model_id

        self.store = store
        self.graph = graph
        self.run_id = run_id
        self.graph_input = graph_input
        thread_id = (config.get("configurable") or {}).get("thread_id")
        store.start_run(run_id=run_id, kind=kind, user_id=user_id, dataset=dataset, thread_id=thread_id,
                        parent_run_id=parent_run_id, context=describe_context(ctx), request=request, fork=fork)
        judge_refs = {n: r for n, r in ctx.prompts.refs().items() if n.startswith("judge")}
        set_id = store.create_verdict_set(run_id=run_id, source="graph", producer_run_id=run_id,
                                          judge_model=model_id(ctx.model("judge")), mode=ctx.judge_mode,
                                          threshold=ctx.judge_s_threshold, prompts=judge_refs)
        self.recorder = Recorder(store, run_id, graph_set_id=set_id)
        self.ctx = ctx.with_overrides(extra={**ctx.extra, "call_sink": self.recorder.on_call})
        self.config = {**config, "metadata": {**(config.get("metadata") or {}), "intentrec_run_id": run_id}}
        self.output: dict[str, Any] = {}

    def events(self) -> Iterator[tuple[tuple[str, ...], str, Any]]:
        status, error, node = "cancelled", None, None
        try:
            with structlog.contextvars.bound_contextvars(
                    run_id=self.run_id, thread_id=(self.config.get("configurable") or {}).get("thread_id")):
                for ns, mode, data in self.graph.stream(self.graph_input, config=self.config, context=self.ctx,
                                                        stream_mode=STREAM_MODES, subgraphs=True,
                                                        durability="sync"):
                    self.recorder.on_event(ns, mode, data)
                    yield ns, mode, data
            self.output = self.recorder.output
            status = str(self.recorder.summary.get("status") or self.output.get("status") or "ok")
        except GeneratorExit:
            status = "cancelled"
            raise
        except KeyboardInterrupt:
            status, error = "interrupted", "KeyboardInterrupt"
            raise
        except BaseException as e:
            status, error, node = "error", f"{type(e).__name__}: {e}", getattr(e, "node", None)
            raise
        finally:
            self.recorder._safe(self.store.finish_run, self.run_id, status=status,
                                output=self.recorder.summary or None, error=error, error_node=node)

    def run(self) -> dict[str, Any]:
        for _ in self.events():
            pass
        return self.output
