"""LLM dimension evaluators: the dimensions no rule can decide (relevance, informativeness, ...).

Two modes, chosen by ``Context.judge_mode``:

* ``per_dimension`` (as in RecGPT-V2): one structured call per (subject, dimension), with that
  dimension's rubric and only the inputs it needs (``prompts/templates/judge_dimension.prompt``).
  Output schema :class:`DimensionJudgement`: ``{"outcome": "good"|"ok"|"defect", "reason": str}``.
* ``joint`` (cheaper): one structured call per subject returning every dimension of its kind
  (``judge_joint.prompt``). Output schema :class:`TagJudgement` / :class:`ExplanationJudgement`: one
  flat enum field per dimension plus one short ``reason``. Flat enums (no nested objects, no
  per-dimension free text) keep the JSON small and easy for the tiny default model (SmolLM2-135M)
  and its grammar decoder.

Rules take precedence: callers pass only the dimensions the rules left undecided. In joint mode the
model still answers every dimension (the schema is fixed, so the grammar and the scripted test rules
stay simple), and the answers for rule-decided dimensions are discarded (they stay in the raw output
of the call record, useful to calibrate the model against the rules).

Every call goes through :func:`llm.structured.structured_call` (validation errors are fed back and
retried up to ``max_attempts``). **Fallback on invalid output**: when the model gives no valid answer
on every attempt, each dimension asked for is graded ``defect`` with ``fallback=True`` and a reason
saying so -- fail closed, so an output the judge could not grade is regenerated or dropped, never
shown; the run does not crash. Any other failure of the model call (server down, scripted model
exhausted) is raised as :class:`JudgeError` naming the node, subject and dimension. Template errors
propagate as :class:`prompts.registry.PromptError`.

Untrusted text (the output graded, the intent, evidence, item facts) only reaches the prompt through
the registry's ``data`` filter: fenced as «...», one line, markers stripped, length-capped.

**Call sink.** ``judge_joint`` / ``judge_dimension`` take an optional ``sink`` with the same keyword
signature as the agents' ``Context.extra["call_sink"]`` (``agents/common.py``): node, subject,
prompt (template ref with path), rendered messages, raw and parsed output, record, error, latency.
The run log passes its recorder here, so traces hold the judges' rendered prompts too. The sink is
told about every call, including fallbacks and failures, before the result is returned or raised.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from pydantic import BaseModel, Field, field_validator

from judges.schemas import (
    EXPLANATION_DIMENSIONS,
    TAG_DIMENSIONS,
    DimensionVerdict,
    ItemFacts,
    JudgeRequest,
    Outcome,
    dimensions_for,
)
from llm.structured import (
    CallRecord,
    LLMError,
    StructuredOutputError,
    StructuredResult,
    model_id,
    structured_call,
)
from prompts.registry import PromptRegistry, PromptTemplate

JOINT_TEMPLATE = "judge_joint"
DIMENSION_TEMPLATE = "judge_dimension"
JOINT_NODE = "joint_evaluator"
DIMENSION_NODE = "dimension_evaluator"
MAX_REASON_CHARS = 240


class JudgeError(LLMError):
    """A judge model call failed for a reason other than invalid output (that one falls back)."""

    def __init__(self, message: str, *, node: str, subject_id: str, dimension: str | None, model: str = ""):
        self.node = node
        self.subject_id = subject_id
        self.dimension = dimension
        super().__init__(message, model=model)


def _outcome(v: Any) -> Any:
    return v.strip().lower() if isinstance(v, str) else v


#: a judge's reason is one short sentence; bounded so constrained decoding always closes the JSON
REASON_MAX = 160


class DimensionJudgement(BaseModel):
    """Per-dimension answer."""

    outcome: Outcome = Field(description="good, ok or defect")
    reason: str = Field(default="", max_length=REASON_MAX, description="one short sentence")

    _norm = field_validator("outcome", mode="before")(_outcome)


class TagJudgement(BaseModel):
    """Joint answer for a tag: one outcome per tag dimension, one short reason."""

    relevance: Outcome
    consistency: Outcome
    specificity: Outcome
    validity: Outcome
    reason: str = Field(default="", max_length=REASON_MAX, description="one short sentence on the main problem")

    _norm = field_validator(*TAG_DIMENSIONS, mode="before")(_outcome)


class ExplanationJudgement(BaseModel):
    """Joint answer for an explanation: one outcome per explanation dimension, one short reason."""

    relevance: Outcome
    factuality: Outcome
    clarity: Outcome
    safety: Outcome
    timeliness: Outcome
    informativeness: Outcome
    attractiveness: Outcome
    reason: str = Field(default="", max_length=REASON_MAX, description="one short sentence on the main problem")

    _norm = field_validator(*EXPLANATION_DIMENSIONS, mode="before")(_outcome)


def joint_schema(kind: str) -> type[TagJudgement] | type[ExplanationJudgement]:
    return TagJudgement if kind == "tag" else ExplanationJudgement


@dataclass
class LLMJudgement:
    """One judge model call: the dimensions it was asked to decide and what came back."""

    node: str
    subject_id: str
    #: the dimensions this call decides (rule-decided ones excluded)
    dimensions: tuple[str, ...]
    verdicts: dict[str, DimensionVerdict]
    record: CallRecord
    #: the template used: name, version, content hash (what traces record)
    prompt: dict[str, Any] = field(default_factory=dict)
    #: False when the call fell back (no valid output after every attempt)
    ok: bool = True


# ----------------------------------------------------------------------------------------------
# rendering

def item_line(item: ItemFacts | None) -> str:
    """The item's facts as one short line for the prompt (the prompt fences it as data)."""
    if item is None:
        return ""
    parts = [item.title]
    cats = [c for c in (item.category_path or ([item.category] if item.category else [])) if c]
    if cats:
        parts.append("category: " + " > ".join(cats))
    if item.brand:
        parts.append(f"brand: {item.brand}")
    parts += [f"{k}: {v}" for k, v in list(item.attributes.items())[:8]]
    return "; ".join(p for p in parts if p)


def _vars(req: JudgeRequest) -> dict[str, Any]:
    return {
        "kind": req.kind,
        "text": req.text,
        "intent": req.intent,
        "evidence": req.evidence,
        "item": item_line(req.item),
        "recent_purchases": "; ".join(req.recent_purchases[:30]),
        "environment": req.environment,
    }


def render_joint(req: JudgeRequest, prompts: PromptRegistry) -> tuple[list[BaseMessage], PromptTemplate]:
    tpl = prompts.get(JOINT_TEMPLATE)
    return tpl.render(dimensions=list(dimensions_for(req.kind)), **_vars(req)), tpl


def render_dimension(req: JudgeRequest, dimension: str,
                     prompts: PromptRegistry) -> tuple[list[BaseMessage], PromptTemplate]:
    if dimension not in dimensions_for(req.kind):
        raise ValueError(f"{dimension!r} is not a {req.kind} dimension: {dimensions_for(req.kind)}")
    tpl = prompts.get(DIMENSION_TEMPLATE)
    return tpl.render(dimension=dimension, **_vars(req)), tpl


def prompt_ref(tpl: PromptTemplate) -> dict[str, Any]:
    """Name, version and hash of a template (no file path: refs go into state and the run log)."""
    return {"name": tpl.name, "version": tpl.version, "sha256": tpl.sha256[:16]}


# ----------------------------------------------------------------------------------------------
# calls

def _reason(text: str, outcome: str) -> str:
    r = " ".join((text or "").split())[:MAX_REASON_CHARS]
    if not r and outcome == "defect":
        return "judged a defect by the model (no reason given)"
    return r


def _fallback(dims: tuple[str, ...], err: StructuredOutputError) -> dict[str, DimensionVerdict]:
    lines = [ln.strip() for ln in (err.errors[-1] if err.errors else "").splitlines() if ln.strip()]
    why = " ".join(lines[:2])[:160]
    reason = (f"no valid judge answer after {err.attempts} attempt(s); graded defect (fail closed)"
              + (f": {why}" if why else ""))
    return {d: DimensionVerdict(dimension=d, outcome="defect", reason=reason, source="llm", fallback=True)
            for d in dims}


@dataclass
class _Failure:
    verdicts: dict[str, DimensionVerdict]
    record: CallRecord


Sink = Callable[..., None]


def _report(sink: Sink | None, node: str, req: JudgeRequest, tpl: PromptTemplate, messages: list[BaseMessage],
            res: StructuredResult | _Failure | None, error: str | None, latency_s: float) -> None:
    """Tell the call sink (the run log) about one judge call; a no-op without a sink."""
    if sink is None:
        return
    record = res.record if res is not None else None
    sink(node=node, subject=req.subject_id, prompt=tpl.ref, messages=messages,
         raw=record.raw if record is not None else None,
         parsed=res.value.model_dump() if isinstance(res, StructuredResult) else None,
         record=record.as_dict() if record is not None else None, error=error, latency_s=latency_s)


def _call(node: str, req: JudgeRequest, dims: tuple[str, ...], model: BaseChatModel, schema: type[BaseModel],
          messages: list[BaseMessage], max_attempts: int, dimension: str | None, tpl: PromptTemplate,
          sink: Sink | None = None) -> StructuredResult | _Failure:
    """The structured call, or the documented fallback when every attempt gave invalid output."""
    t0 = time.perf_counter()
    try:
        res = structured_call(model, schema, messages, max_attempts=max_attempts)
    except StructuredOutputError as e:
        record = CallRecord(model_id=e.model or model_id(model), schema=schema.__name__, attempts=e.attempts,
                            latency_s=time.perf_counter() - t0, raw=(e.raw[-1] if e.raw else "")[:2000],
                            errors=list(e.errors))
        failure = _Failure(_fallback(dims, e), record)
        _report(sink, node, req, tpl, messages, failure, str(e), record.latency_s)
        return failure
    except Exception as e:  # transport errors, an exhausted scripted model, ...
        what = f"dimension {dimension!r}" if dimension else "all dimensions"
        err = JudgeError(f"judge node {node!r} failed on {req.subject_id!r} ({what}): {type(e).__name__}: {e}",
                         node=node, subject_id=req.subject_id, dimension=dimension, model=model_id(model))
        _report(sink, node, req, tpl, messages, None, str(err), time.perf_counter() - t0)
        raise err from e
    _report(sink, node, req, tpl, messages, res, None, res.record.latency_s)
    return res


def judge_joint(req: JudgeRequest, *, model: BaseChatModel, prompts: PromptRegistry,
                dimensions: tuple[str, ...] | list[str] | None = None, max_attempts: int = 3,
                sink: Sink | None = None) -> LLMJudgement:
    """One call grading every dimension of ``req``; keeps the answers for ``dimensions`` (default:
    all dimensions of its kind)."""
    dims = tuple(dimensions) if dimensions is not None else dimensions_for(req.kind)
    messages, tpl = render_joint(req, prompts)
    res = _call(JOINT_NODE, req, dims, model, joint_schema(req.kind), messages, max_attempts, None, tpl, sink)
    if isinstance(res, _Failure):
        return LLMJudgement(JOINT_NODE, req.subject_id, dims, res.verdicts, res.record, prompt_ref(tpl), ok=False)
    value = res.value
    verdicts = {}
    for d in dims:
        outcome = getattr(value, d)
        verdicts[d] = DimensionVerdict(dimension=d, outcome=outcome,
                                       reason=_reason(value.reason, outcome) if outcome != "good" else "",
                                       source="llm")
    return LLMJudgement(JOINT_NODE, req.subject_id, dims, verdicts, res.record, prompt_ref(tpl))


def judge_dimension(req: JudgeRequest, dimension: str, *, model: BaseChatModel, prompts: PromptRegistry,
                    max_attempts: int = 3, sink: Sink | None = None) -> LLMJudgement:
    """One call grading one dimension of ``req``."""
    dims = (dimension,)
    messages, tpl = render_dimension(req, dimension, prompts)
    res = _call(DIMENSION_NODE, req, dims, model, DimensionJudgement, messages, max_attempts, dimension, tpl, sink)
    if isinstance(res, _Failure):
        return LLMJudgement(DIMENSION_NODE, req.subject_id, dims, res.verdicts, res.record, prompt_ref(tpl),
                            ok=False)
    v = res.value
    verdict = DimensionVerdict(dimension=dimension, outcome=v.outcome, reason=_reason(v.reason, v.outcome),
                               source="llm")
    return LLMJudgement(DIMENSION_NODE, req.subject_id, dims, {dimension: verdict}, res.record, prompt_ref(tpl))


def call_summary(j: LLMJudgement, *, call_id: str) -> dict[str, Any]:
    """The compact record of one judge call kept in graph state (``judge_calls``) and the run log."""
    r = j.record
    return {
        "call_id": call_id,
        "node": j.node,
        "subject_id": j.subject_id,
        "dimension": j.dimensions[0] if j.node == DIMENSION_NODE else "*",
        "dimensions": list(j.dimensions),
        "model": r.model_id,
        "schema": r.schema,
        "prompt": dict(j.prompt),
        "tokens": r.prompt_tokens + r.completion_tokens,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "latency_s": round(r.latency_s, 4),
        "attempts": r.attempts,
        "ok": j.ok,
        "raw": (r.raw or "")[:500],
        "error": (r.errors[-1][:300] if (r.errors and not j.ok) else ""),
    }
