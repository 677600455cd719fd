"""Judging as plain functions over ``JudgeRequest -> Verdict``, usable outside the graph.

The judge subgraph (``judges/subgraph.py``) and judge replay over logged runs (issue 6) both call
these functions, so a replay with the same model, prompts, mode and threshold reproduces the graph's
verdicts exactly, and a replay with another prompt folder or model differs only by what changed.

Steps for one request:

1. :func:`plan` runs the deterministic rules (``judges/rules.py``) and lists the dimensions they
   left undecided;
2. :func:`run_llm` asks the judge model about those: one joint call, or one call per dimension;
3. :func:`reviewer.combine` + :func:`reviewer.review` grade S/A/B and write the feedback.

A request whose dimensions the rules decide completely makes no model call. Every function takes an
optional ``sink`` (see ``judges/llm_judges.py``) that is told about each model call with its rendered
prompt; the run log uses it for the graph and for replays.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal
from uuid import uuid4

from langchain_core.language_models import BaseChatModel

from judges.llm_judges import LLMJudgement, Sink, call_summary, judge_dimension, judge_joint
from judges.reviewer import combine, review
from judges.rules import evaluate_rules
from judges.schemas import DimensionVerdict, JudgeRequest, Verdict, dimensions_for
from llm.structured import CallRecord, model_id
from prompts.registry import PromptRegistry

Mode = Literal["joint", "per_dimension"]
MODES: tuple[str, ...] = ("joint", "per_dimension")


def check_mode(mode: str) -> Mode:
    if mode not in MODES:
        raise ValueError(f"unknown judge mode {mode!r}; expected one of {MODES}")
    return mode  # type: ignore[return-value]


def plan(request: JudgeRequest, *, semantic: Any = None,
         profile: str = "llm") -> tuple[dict[str, DimensionVerdict], tuple[str, ...]]:
    """(rule verdicts, dimensions left for the model), in canonical dimension order.

    Profile ``semantic`` (see ``judges/semantic.py``): after the rules, the semantic evaluators decide
    their dimensions, and every dimension still open is ``ok`` (it passed every rule) instead of going
    to the LLM, so nothing is left for the model."""
    rules = evaluate_rules(request)
    if profile == "semantic":
        if semantic is not None:
            for d, v in semantic.evaluate(request).items():
                rules.setdefault(d, v)
        for d in dimensions_for(request.kind):
            rules.setdefault(d, DimensionVerdict(dimension=d, outcome="ok", source="rule",
                                                 reason="passed every rule check (semantic profile)"))
    elif profile != "llm":
        raise ValueError(f"unknown judge profile {profile!r}; expected 'llm' or 'semantic'")
    return rules, tuple(d for d in dimensions_for(request.kind) if d not in rules)


def run_llm(request: JudgeRequest, pending: Iterable[str], *, model: BaseChatModel, prompts: PromptRegistry,
            mode: str = "joint", max_attempts: int = 3, sink: Sink | None = None) -> list[LLMJudgement]:
    """Judge the ``pending`` dimensions: one joint call, or one call per dimension."""
    pending = tuple(pending)
    if not pending:
        return []
    if check_mode(mode) == "joint":
        return [judge_joint(request, model=model, prompts=prompts, dimensions=pending, max_attempts=max_attempts,
                            sink=sink)]
    return [judge_dimension(request, d, model=model, prompts=prompts, max_attempts=max_attempts, sink=sink)
            for d in pending]


def judge_detailed(request: JudgeRequest, *, model: BaseChatModel, prompts: PromptRegistry | None = None,
                   mode: str = "joint", threshold: float = 0.75, max_attempts: int = 3,
                   semantic: Any = None, profile: str = "llm",
                   sink: Sink | None = None) -> tuple[Verdict, list[LLMJudgement]]:
    """Like :func:`judge_one`, returning each model call with its prompt reference and verdicts."""
    prompts = prompts if prompts is not None else PromptRegistry()
    rules, pending = plan(request, semantic=semantic, profile=profile)
    calls = run_llm(request, pending, model=model, prompts=prompts, mode=mode, max_attempts=max_attempts,
                    sink=sink)
    llm = {d: v for c in calls for d, v in c.verdicts.items()}
    verdict = review(request, combine(request.kind, rules, llm), threshold=threshold,
                     judge_model=model_id(model), mode=mode)
    return verdict, calls


def judge_one(request: JudgeRequest, *, model: BaseChatModel, prompts: PromptRegistry | None = None,
              mode: str = "joint", threshold: float = 0.75, max_attempts: int = 3,
              semantic: Any = None, profile: str = "llm",
              sink: Sink | None = None) -> tuple[Verdict, list[CallRecord]]:
    """Grade one tag or explanation. Returns the verdict and the record of every model call."""
    verdict, calls = judge_detailed(request, model=model, prompts=prompts, mode=mode, threshold=threshold,
                                    max_attempts=max_attempts, semantic=semantic, profile=profile, sink=sink)
    return verdict, [c.record for c in calls]


def judge_many(requests: Iterable[JudgeRequest], *, model: BaseChatModel, prompts: PromptRegistry | None = None,
               mode: str = "joint", threshold: float = 0.75, max_attempts: int = 3,
               semantic: Any = None, profile: str = "llm",
               sink: Sink | None = None) -> tuple[dict[str, Verdict], list[dict[str, Any]]]:
    """Grade a batch in order (replay): verdicts by subject id, and compact call records (the same
    dicts the subgraph appends to ``judge_calls``)."""
    prompts = prompts if prompts is not None else PromptRegistry()
    verdicts: dict[str, Verdict] = {}
    records: list[dict[str, Any]] = []
    for req in requests:
        v, calls = judge_detailed(req, model=model, prompts=prompts, mode=mode, threshold=threshold,
                                  max_attempts=max_attempts, semantic=semantic, profile=profile, sink=sink)
        verdicts[req.subject_id] = v
        records += [call_summary(c, call_id=uuid4().hex) for c in calls]
    return verdicts, records
