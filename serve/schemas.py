"""Request and response bodies of the HTTP service (all listed in the OpenAPI schema)."""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.dates import EARLIEST, LATEST, in_range


class ContextOverrides(BaseModel):
    """Per-request overrides of the graph's context. Only these fields are accepted."""

    model_config = ConfigDict(extra="forbid")

    now: str | None = Field(None, pattern=r"^\d{4}-\d{2}-\d{2}$", examples=["2017-10-01"],
                            description="Environment date YYYY-MM-DD; history after it is hidden from the agents.")
    n_personas: int | None = Field(None, ge=1, le=5, description="K personas.")
    n_tags: int | None = Field(None, ge=1, le=50, description="N final tags.")
    tags_only: bool | None = Field(None, description="Stop after the tag judge: tags, no items.")
    n_items: int | None = Field(None, ge=1, le=20, description="Items to recommend.")
    beta: float | None = Field(None, ge=0.0, le=1.0, description="Weight of the user tower vs the tags in retrieval.")
    judge_mode: Literal["joint", "per_dimension"] | None = None

    @field_validator("now")
    @classmethod
    def _real_date(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                when = date.fromisoformat(v)
            except ValueError as e:
                raise ValueError(f"not a calendar date: {v}") from e
            if not in_range(when):
                raise ValueError(f"{v} is outside the supported range {EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d}")
        return v


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(..., min_length=1, max_length=64, examples=["1"], description="User id, as in the dataset.")
    fresh: bool = Field(True, description="true: run the graph now; false: the latest logged successful run "
                                          "(e.g. written by `app.py batch`).")
    context: ContextOverrides | None = Field(None, description="Overrides for a fresh run (not allowed with "
                                                               "fresh=false).")


class Persona(BaseModel):
    name: str
    focus: str | None = None
    evidence: str | None = None


class Tag(BaseModel):
    tag: str
    persona: str | None = None
    intent: str | None = None
    reason: str | None = None
    grade: str | None = None


class Recommendation(BaseModel):
    item_id: str
    title: str | None = None
    category: str | None = None
    tag: str | None = None
    persona: str | None = None
    score: float | None = None
    grade: str | None = None
    explanation: str | None = None


class RecommendResponse(BaseModel):
    run_id: str | None = Field(None, description="The run in the run log (GET /runs/{run_id}).")
    user_id: str
    status: str | None = Field(None, description="ok, empty, ok:fallback, empty:fallback.")
    fallback: str | None = None
    source: Literal["fresh", "log"]
    personas: list[Persona] = Field(default_factory=list)
    tags: list[Tag] = Field(default_factory=list)
    recommendations: list[Recommendation] = Field(default_factory=list)


class TraceStats(BaseModel):
    tasks: int
    calls: int
    tokens: int
    attempts: int
    errors: int
    b_grades: int


class TraceResponse(BaseModel):
    """``runlog.trace.build_trace``: the run row, totals, the task tree, every model call (with its
    rendered prompt), the verdict sets with their judgements, the recommendations, linked runs."""

    run: dict[str, Any]
    stats: TraceStats
    tree: list[dict[str, Any]]
    calls: list[dict[str, Any]]
    verdict_sets: list[dict[str, Any]]
    recommendations: list[dict[str, Any]]
    children: list[dict[str, Any]]


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"
    model_loaded: bool
    loading: bool = Field(description="The recommender is being built right now.")
    load_error: str | None = Field(None, description="Why the last attempt to build it failed.")
    runs_in_flight: int
    max_concurrent_runs: int
    runlog: bool | None = Field(description="A run log is open (null: not known until the recommender is built).")
    auth: bool = Field(description="Endpoints other than /healthz need a bearer token.")


class FieldError(BaseModel):
    field: str
    msg: str
    type: str


class ErrorResponse(BaseModel):
    detail: str
    errors: list[FieldError] | None = None
