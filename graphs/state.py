"""Graph state: a TypedDict with explicit reducers, plus input and output schemas.

State keeps ids, scores and short texts only (no embeddings, no catalogue rows), so checkpoints stay
small. Keys written by parallel branches (experts, explainers, judge evaluators) have reducers:

* ``add`` (list concatenation) for proposals, drops, call records and node timings;
* ``merge_dicts`` for per-item maps (explanations, regeneration counters);
* the judge subgraph's own key types (``JudgeRequests``, ``Verdicts``, ``JudgeCalls`` from
  ``judges.subgraph``), so parent and subgraph share keys and reducers: verdicts are keyed by subject
  id and a later verdict for a subject replaces the earlier one (a regenerated output's grade wins).
"""

from __future__ import annotations

from operator import add
from typing import Annotated, Any, NotRequired, TypedDict

from judges.subgraph import JudgeCalls, JudgeRequests, Verdicts


def merge_dicts(left: dict | None, right: dict | None) -> dict:
    out = dict(left or {})
    out.update(right or {})
    return out


class InputState(TypedDict):
    user_id: str
    #: optional: the caller's run id (the run log passes its own so log and output agree)
    run_id: NotRequired[str]


class OutputState(TypedDict, total=False):
    run_id: str
    user_id: str
    status: str
    fallback: str | None
    personas: list[dict]
    tags: list[dict]
    recommendations: list[dict]
    drops: list[dict]
    node_totals: dict[str, dict[str, Any]]


class State(TypedDict, total=False):
    user_id: str
    run_id: str
    status: str
    # prepared context (short texts)
    shared_context: str
    evidence: str
    recent_purchases: list[str]
    history_stats: dict[str, Any]
    tag_vocabulary: list[str]
    #: the candidate tools' phrases for this user, best first: {phrase, category, tool, score, why}
    tag_candidates: list[dict]
    tags_only: bool  # Context.tags_only, copied by prepare so routing reads state only (forks replay it)
    # agents
    personas: list[dict]
    proposals: Annotated[list[dict], add]
    tags: list[dict]
    candidates: list[dict]
    #: persona -> style guideline (meta-prompting stage 1, written once per persona)
    guidelines: dict[str, str]
    explanations: Annotated[dict[str, dict], merge_dicts]
    regen: Annotated[dict[str, int], merge_dicts]
    fallback: str | None
    # judge subgraph (same keys and reducers as judges.subgraph.JudgeState)
    judge_requests: JudgeRequests
    verdicts: Verdicts
    judge_calls: JudgeCalls
    # accounting
    drops: Annotated[list[dict], add]
    calls: Annotated[list[dict], add]
    node_times: Annotated[list[dict], add]
    # output
    recommendations: list[dict]
    node_totals: dict[str, dict[str, Any]]
