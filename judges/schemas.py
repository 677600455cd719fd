"""What the judges read and write.

A :class:`JudgeRequest` is one output to grade: a tag (with its intent and evidence) or an
explanation (with the item's facts). Dimension evaluators each return a :class:`DimensionVerdict`
(``good`` / ``ok`` / ``defect``); the senior reviewer turns them into a :class:`Verdict` with grade S,
A or B: any defect gives B; otherwise the share of ``good`` dimensions decides S (≥ threshold) or A.

Requests and verdicts are small and JSON-serialisable: they live in graph state and in the run log,
so logged runs can be re-judged later (replay).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Grade = Literal["S", "A", "B"]
Outcome = Literal["good", "ok", "defect"]
Kind = Literal["tag", "explanation"]

TAG_DIMENSIONS: tuple[str, ...] = ("relevance", "consistency", "specificity", "validity")
EXPLANATION_DIMENSIONS: tuple[str, ...] = (
    "relevance", "factuality", "clarity", "safety", "timeliness", "informativeness", "attractiveness",
)


def dimensions_for(kind: Kind) -> tuple[str, ...]:
    return TAG_DIMENSIONS if kind == "tag" else EXPLANATION_DIMENSIONS


class ItemFacts(BaseModel):
    item_id: str
    title: str
    category: str = ""
    category_path: list[str] = Field(default_factory=list)
    brand: str | None = None
    attributes: dict[str, str] = Field(default_factory=dict)


class JudgeRequest(BaseModel):
    subject_id: str
    kind: Kind
    #: the tag text, or the explanation text
    text: str
    #: the intent (and persona) the output serves
    intent: str = ""
    #: short evidence from the user's history the output should rest on
    evidence: str = ""
    #: for explanations: the facts of the item explained
    item: ItemFacts | None = None
    #: for tags: the candidate tool that found this phrase in the user's own log before the run's date
    #: and its evidence ("own: bought 12x, last 3 days ago"), set by the graph only when the phrase is in
    #: the user's candidate pool (never taken from model output); empty for free generation
    grounding: str = ""
    #: for tags: titles/types the user bought in the last few weeks (freshness)
    recent_purchases: list[str] = Field(default_factory=list)
    #: the environment description (date, season, holidays) for timeliness
    environment: str = ""
    #: brand names known in the catalogue (validity: no brands in tags)
    banned_terms: list[str] = Field(default_factory=list)
    #: the literal text of the prompts that produced the output (instructions and few-shot examples):
    #: an output that copies it is a defect (``rules.copied_prompt``)
    prompt_texts: list[str] = Field(default_factory=list)


class DimensionVerdict(BaseModel):
    dimension: str
    outcome: Outcome
    reason: str = ""
    #: "rule" for deterministic evaluators, "semantic" for embedding evaluators, "llm" for model judges
    source: Literal["rule", "semantic", "llm"] = "llm"
    #: True when the judge model gave no valid answer after every attempt: the dimension is then a
    #: fail-closed ``defect`` (an unjudged output is never shown), not the model's opinion
    fallback: bool = False


class Verdict(BaseModel):
    subject_id: str
    kind: Kind
    grade: Grade
    dimensions: list[DimensionVerdict]
    #: what to fix, fed back to the generator on regeneration (empty for S/A)
    feedback: str = ""
    judge_model: str = ""
    mode: Literal["joint", "per_dimension"] = "joint"

    @property
    def passed(self) -> bool:
        return self.grade in ("S", "A")
