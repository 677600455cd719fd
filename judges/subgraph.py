"""The agent-as-a-judge subgraph.

::

    START ─► rule_evaluators ─┬─► joint_evaluator ×subjects       (Send; judge_mode="joint")
                              ├─► dimension_evaluator ×(subject, dimension)   (Send; "per_dimension")
                              └─► senior_reviewer (directly, when the rules decided everything)
             joint/dimension_evaluator ─► senior_reviewer ─► END

* ``rule_evaluators`` runs the deterministic rules for the whole batch (cheap, exact) and fans out
  with ``Send`` only the work the rules left: one ``joint_evaluator`` task per subject, or one
  ``dimension_evaluator`` task per (subject, undecided dimension). Mode, model, prompts, attempts
  and threshold come from the runtime :class:`~agents.context.Context` (``judge_mode``,
  ``model("judge")``, ``prompts``, ``max_attempts``, ``judge_s_threshold``).
* ``senior_reviewer`` combines rule and model verdicts (rules win) and grades S/A/B with feedback.
* The evaluators pass ``Context.extra["call_sink"]`` (when set) to the judge functions, so the run log
  records each judge call's rendered prompt, as it does for the agents.

The nodes call the plain functions of ``judges/evaluate.py``, ``judges/llm_judges.py`` and
``judges/reviewer.py``, so replaying judges on logged requests outside the graph gives the same
verdicts.

State keys shared with the parent graph (use the exported aliases so the reducers match):

* ``judge_requests`` (:data:`JudgeRequests`, reducer :func:`replace_requests`): the batch to grade;
  the only input the subgraph reads.
* ``verdicts`` (:data:`Verdicts`, reducer :func:`merge_verdicts`): subject id → Verdict; a later
  pass replaces the entries it re-grades and keeps the others.
* ``judge_calls`` (:data:`JudgeCalls`, reducer :func:`append_calls`): compact call records
  (:func:`judges.llm_judges.call_summary`), appended and de-duplicated by ``call_id``.

The subgraph declares ``input_schema`` (``judge_requests`` only) and ``output_schema``
(``verdicts``, ``judge_calls``): added as a node of a parent graph it starts from the new batch, not
the parent's earlier verdicts and calls, and returns only what this pass produced, so the parent's
reducers never see an entry twice (a parent with a plain ``operator.add`` on ``judge_calls`` works
too; ``append_calls`` also de-duplicates by ``call_id``, for a subgraph given its parent's calls).
``judge_findings`` is internal scratch, reset by ``rule_evaluators`` on every pass with ``Overwrite``.

Checkpoints hold :class:`JudgeRequest` and :class:`Verdict` objects (pydantic, serialised by
LangGraph's msgpack serde, never pickle). LangGraph warns when it loads types that are not on its
allow-list; pass :data:`CHECKPOINT_TYPES` as ``allowed_msgpack_modules``. Under a strict serde that
returns them as plain dicts, the reducers and nodes validate dicts back into the models.
"""

from __future__ import annotations

from collections import defaultdict
from operator import add
from typing import Annotated, Any, Literal, TypedDict
from uuid import uuid4

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command, Overwrite, Send

from agents.context import Context
from judges.evaluate import check_mode, plan
from judges.llm_judges import DIMENSION_NODE, JOINT_NODE, call_summary, judge_dimension, judge_joint
from judges.reviewer import combine, review
from judges.schemas import DimensionVerdict, ItemFacts, JudgeRequest, Verdict
from llm.structured import model_id

RULES_NODE = "rule_evaluators"
REVIEWER_NODE = "senior_reviewer"
NODES = (RULES_NODE, JOINT_NODE, DIMENSION_NODE, REVIEWER_NODE)

#: (module, class) pairs for ``JsonPlusSerializer(allowed_msgpack_modules=...)``
CHECKPOINT_TYPES: tuple[tuple[str, str], ...] = tuple(
    (c.__module__, c.__name__) for c in (JudgeRequest, ItemFacts, Verdict, DimensionVerdict)
)


# ----------------------------------------------------------------------------------------------
# reducers and key types (the parent graph's State reuses these)

def _request(r: Any) -> JudgeRequest:
    return r if isinstance(r, JudgeRequest) else JudgeRequest.model_validate(r)


def _dimension_verdict(v: Any) -> DimensionVerdict:
    return v if isinstance(v, DimensionVerdict) else DimensionVerdict.model_validate(v)


def replace_requests(_left: list[JudgeRequest] | None, right: list[Any] | None) -> list[JudgeRequest]:
    """Each judge pass grades the batch written just before it: the new batch replaces the old.
    Dicts (e.g. from a JSON state edit) are validated into :class:`JudgeRequest`."""
    return [_request(r) for r in (right or [])]


def merge_verdicts(left: dict[str, Verdict] | None, right: dict[str, Any] | None) -> dict[str, Verdict]:
    """Subject id → Verdict; entries in ``right`` replace those in ``left`` (a regenerated output's
    new grade wins), others are kept. Dicts are validated into :class:`Verdict`."""
    out = dict(left or {})
    for k, v in (right or {}).items():
        out[k] = v if isinstance(v, Verdict) else Verdict.model_validate(v)
    return out


def append_calls(left: list[dict[str, Any]] | None, right: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Append call records, skipping any whose ``call_id`` is already present."""
    out = list(left or [])
    seen = {c.get("call_id") for c in out if c.get("call_id")}
    for c in right or []:
        cid = c.get("call_id")
        if cid and cid in seen:
            continue
        seen.add(cid)
        out.append(c)
    return out


JudgeRequests = Annotated[list[JudgeRequest], replace_requests]
Verdicts = Annotated[dict[str, Verdict], merge_verdicts]
JudgeCalls = Annotated[list[dict[str, Any]], append_calls]


class JudgeInput(TypedDict):
    judge_requests: JudgeRequests


class JudgeOutput(TypedDict, total=False):
    verdicts: Verdicts
    judge_calls: JudgeCalls


class JudgeState(TypedDict, total=False):
    judge_requests: JudgeRequests
    verdicts: Verdicts
    judge_calls: JudgeCalls
    #: internal: {"subject_id", "verdicts": [DimensionVerdict]} from rules and evaluators of this pass
    judge_findings: Annotated[list[dict[str, Any]], add]


class EvaluatorTask(TypedDict):
    """The payload of one ``Send`` to an evaluator node."""

    request: JudgeRequest
    dimensions: list[str]


# ----------------------------------------------------------------------------------------------
# nodes

def rule_evaluators(
    state: JudgeState, runtime: Runtime[Context],
) -> Command[Literal["joint_evaluator", "dimension_evaluator", "senior_reviewer"]]:
    mode = check_mode(runtime.context.judge_mode)
    requests = replace_requests(None, state.get("judge_requests"))
    ids = [r.subject_id for r in requests]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"judge_requests has duplicate subject ids: {dupes}")
    findings: list[dict[str, Any]] = []
    sends: list[Send] = []
    semantic = runtime.context.semantic_judge
    if runtime.context.judge_profile == "semantic" and hasattr(semantic, "prime"):
        semantic.prime(requests)  # one batched embedding call for every subject
    for req in requests:
        rules, pending = plan(req, semantic=semantic, profile=runtime.context.judge_profile)
        findings.append({"subject_id": req.subject_id, "verdicts": list(rules.values())})
        if not pending:
            continue
        if mode == "joint":
            sends.append(Send(JOINT_NODE, EvaluatorTask(request=req, dimensions=list(pending))))
        else:
            sends += [Send(DIMENSION_NODE, EvaluatorTask(request=req, dimensions=[d])) for d in pending]
    return Command(update={"judge_findings": Overwrite(findings)}, goto=sends or REVIEWER_NODE)


def _evaluator_update(j: Any) -> dict[str, Any]:
    return {"judge_findings": [{"subject_id": j.subject_id, "verdicts": list(j.verdicts.values())}],
            "judge_calls": [call_summary(j, call_id=uuid4().hex)]}


def joint_evaluator(task: EvaluatorTask, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = runtime.context
    j = judge_joint(_request(task["request"]), model=ctx.model("judge"), prompts=ctx.prompts,
                    dimensions=task["dimensions"], max_attempts=ctx.max_attempts, sink=ctx.extra.get("call_sink"))
    return _evaluator_update(j)


def dimension_evaluator(task: EvaluatorTask, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = runtime.context
    (dimension,) = task["dimensions"]
    j = judge_dimension(_request(task["request"]), dimension, model=ctx.model("judge"), prompts=ctx.prompts,
                        max_attempts=ctx.max_attempts, sink=ctx.extra.get("call_sink"))
    return _evaluator_update(j)


def senior_reviewer(state: JudgeState, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = runtime.context
    rule_v: dict[str, dict[str, DimensionVerdict]] = defaultdict(dict)
    llm_v: dict[str, dict[str, DimensionVerdict]] = defaultdict(dict)
    for f in state.get("judge_findings") or []:
        for v in map(_dimension_verdict, f["verdicts"]):
            (rule_v if v.source == "rule" else llm_v)[f["subject_id"]][v.dimension] = v
    judge_model = model_id(ctx.model("judge"))
    verdicts = {}
    for req in replace_requests(None, state.get("judge_requests")):
        dims = combine(req.kind, rule_v[req.subject_id], llm_v[req.subject_id])
        verdicts[req.subject_id] = review(req, dims, threshold=ctx.judge_s_threshold, judge_model=judge_model,
                                          mode=ctx.judge_mode)
    return {"verdicts": verdicts}


def build_judge_graph(*, checkpointer: Any = None, name: str = "judge") -> CompiledStateGraph:
    """Compile the judge subgraph. Add it to a parent with ``builder.add_node("judge", graph)``; run it
    alone with ``graph.invoke({"judge_requests": [...]}, context=Context(...))``."""
    g = StateGraph(JudgeState, context_schema=Context, input_schema=JudgeInput, output_schema=JudgeOutput)
    g.add_node(RULES_NODE, rule_evaluators)
    g.add_node(JOINT_NODE, joint_evaluator, input_schema=EvaluatorTask)
    g.add_node(DIMENSION_NODE, dimension_evaluator, input_schema=EvaluatorTask)
    g.add_node(REVIEWER_NODE, senior_reviewer)
    g.add_edge(START, RULES_NODE)
    g.add_edge(JOINT_NODE, REVIEWER_NODE)
    g.add_edge(DIMENSION_NODE, REVIEWER_NODE)
    g.add_edge(REVIEWER_NODE, END)
    return g.compile(checkpointer=checkpointer, name=name)
