"""The run-time ``Context`` given to the graph as ``context_schema`` (LangGraph's runtime context).

It holds what a run is configured with, not what it computes: models per role, the prompt
registry, sizes (K personas, N tags, items per tag), retrieval β, bounds, judge settings and the
environment (the "now" date, season, holidays). The date is injectable so runs are reproducible and
offline evaluation can run "as of" a cutoff.

Nodes read it as ``runtime.context``; the judge subgraph reads the same object. Nothing here is
checkpointed, so it may hold live objects (models, the registry).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel

from core.calendar import upcoming_holidays
from core.dates import check_date
from prompts.registry import PromptRegistry

ROLES = ("planner", "expert", "arbiter", "explainer", "judge")

_SEASONS = {12: "winter", 1: "winter", 2: "winter", 3: "spring", 4: "spring", 5: "spring",
            6: "summer", 7: "summer", 8: "summer", 9: "autumn", 10: "autumn", 11: "autumn"}

@dataclass
class Environment:
    now: datetime
    season: str
    holidays: list[str]

    @classmethod
    def at(cls, now: datetime | date | str | None = None, holidays: list[str] | None = None) -> Environment:
        if now is None:
            now = datetime.now()
        elif isinstance(now, str):
            now = datetime.fromisoformat(now)
        elif not isinstance(now, datetime):
            now = datetime(now.year, now.month, now.day)
        check_date(now, "now")
        return cls(now=now, season=_SEASONS[now.month],
                   holidays=holidays if holidays is not None else upcoming_holidays(now.date()))

    def describe(self) -> str:
        hol = ", ".join(self.holidays) if self.holidays else "none in the next 30 days"
        return f"Date: {self.now:%Y-%m-%d} ({self.now:%A}). Season: {self.season}. Upcoming holidays: {hol}."


@dataclass
class Context:
    #: one chat model per role (``ROLES``); a ``"default"`` entry serves roles not listed
    models: dict[str, BaseChatModel]
    prompts: PromptRegistry = field(default_factory=PromptRegistry)
    n_personas: int = 3
    #: N final tags (RecGPT scores the top 30 of at least 50 generated per user)
    n_tags: int = 30
    #: most tags one expert writes (K experts x this is the arbiter's pool before the candidate tools)
    tags_per_expert: int = 15
    #: intents one expert writes: 2 (an interest each, every tag names the one it serves) or 1 (the
    #: tags serve it, and carry no index: fewer tokens to decode)
    intents_per_expert: int = 2
    #: stop after the tag judge (prepare -> planner -> experts -> arbiter -> tag judge): no retrieval or
    #: explanations; what ``eval tags`` scores
    tags_only: bool = False
    items_per_tag: int = 3
    n_items: int = 8
    beta: float = 0.6
    #: with a repeat-aware retriever, at least this share of the shown items are discovery (items the
    #: user never bought, found by the tags and the user tower); the rest may be re-buys ranked by
    #: TIFU-KNN. The retriever's own floor (10%) is what maximises recall; the graph exists to show
    #: intents, so half its items are theirs by default
    discovery_share: float = 0.5
    #: how many times a B-graded tag set / explanation is regenerated with the judge's feedback
    regen_limit: int = 1
    #: an explanation still graded B after ``regen_limit``: "drop" the item, or "facts": replace the text
    #: with a plain line stated from the user's own history (``agents.explainer.facts_explanation``),
    #: which is judged like any other before it is shown; counted as ``explanation_from_facts``
    explanation_fallback: Literal["drop", "facts"] = "drop"
    #: who writes the explanations: "llm" (the explainer agent, meta-prompting) or "facts" (the plain
    #: facts line of ``agents.explainer.facts_explanation`` for every item, judged like any other, no
    #: model call: for models whose lines never pass the judge, as measured for the embedded 135M one)
    explanations: Literal["llm", "facts"] = "llm"
    #: who writes the personas: "llm" (the planner agent) or "categories" (the user's most-bought
    #: categories, ``judges.personas.category_personas``, no model call: for models whose personas the
    #: defect rule replaces anyway, as measured for the embedded 135M one)
    persona_source: Literal["llm", "categories"] = "llm"
    judge_mode: Literal["joint", "per_dimension"] = "joint"
    #: "open": experts write any 2-4-word tag; "catalogue": tags are constrained (grammar enum) to
    #: catalogue product types near the user's categories (agents/expert.py)
    tag_vocabulary: Literal["open", "catalogue"] = "open"
    #: in the ``catalogue`` mode, how many of the candidate tools' phrases (in their own ranking) form
    #: the expert's enum and its PRODUCT TYPES list; None: the whole pool
    catalogue_size: int | None = None
    #: candidates per tool shown as evidence in the shared context's CANDIDATES section (0: no section)
    evidence_per_tool: int = 6
    #: "llm": rules, then the LLM judges the rest (the paper); "semantic": rules plus embedding
    #: evaluators, no LLM judge calls (for small local models that cannot judge; judges/semantic.py)
    judge_profile: Literal["llm", "semantic"] = "llm"
    #: the embedding evaluators used by the "semantic" profile (judges.semantic.SemanticJudge)
    semantic_judge: Any = None
    #: share of positive dimensions at or above which a defect-free output is graded S (else A)
    judge_s_threshold: float = 0.75
    #: validation retries inside one structured call
    max_attempts: int = 3
    #: token budget for the compressed history in the shared context
    history_budget: int = 1500
    #: days of purchases that count as "recent" for the arbiter's freshness rule
    recent_days: int = 21
    #: the environment; ``now`` is also the cutoff for the history the agents see
    env: Environment = field(default_factory=Environment.at)
    #: if every LLM attempt fails in planning and the user has no categories to build personas from,
    #: fall back to collaborative-only retrieval (marked); off: raise
    fallback_collaborative: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def model(self, role: str) -> BaseChatModel:
        m = self.models.get(role) or self.models.get("default")
        if m is None:
            raise KeyError(f"no model configured for role {role!r} (and no 'default')")
        return m

    def with_overrides(self, **overrides: Any) -> Context:
        return replace(self, **overrides)


#: The embedded small model's prompt sizes (``intentrec.small_model_profile``, and the learning loop's
#: training prompts, which must be what the graph renders). Chosen on the validation split, not the
#: test window (docs/performance.md, "The compact prompt"): a shorter history, the expert's enum cut
#: to the candidate tools' first phrases, fewer tags per expert and no CANDIDATES evidence section
#: (the enum already holds the tools' phrases; the tags came out the same without it), and one intent
#: per expert (its tags then carry no intent index: fewer tokens to decode, the same tag sets). The
#: prompt the 135M model reads is then about half as long, and what it leaves out it did not use.
SMALL_MODEL_PROMPT: dict[str, Any] = {"history_budget": 300, "catalogue_size": 30, "tags_per_expert": 5,
                                      "evidence_per_tool": 0, "intents_per_expert": 1}


#: Context fields that are live objects or computed per run, not settings a command line can give
_NOT_SETTINGS = frozenset({"models", "prompts", "env", "semantic_judge", "extra"})


def context_settings() -> dict[str, Any]:
    """The Context fields a command line may set (``--set KEY=VALUE``), each with its type."""
    from dataclasses import fields
    from typing import get_type_hints

    hints = get_type_hints(Context)
    return {f.name: hints[f.name] for f in fields(Context) if f.name not in _NOT_SETTINGS}


def parse_settings(pairs: list[str] | None, option: str = "--set") -> dict[str, Any]:
    """``["history_budget=500", "catalogue_size=none"]`` -> ``{"history_budget": 500, "catalogue_size": None}``,
    each value validated against the field's type (``none`` where the field allows None). A bad key or
    value is one :class:`IntentRecError` naming it and what is allowed."""
    from pydantic import TypeAdapter, ValidationError

    from core.errors import IntentRecError

    known = context_settings()
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise IntentRecError(f"{option} {pair!r}: expected KEY=VALUE")
        if key not in known:
            raise IntentRecError(f"{option} {pair!r}: unknown setting {key!r}; settings: {', '.join(sorted(known))}")
        adapter = TypeAdapter(known[key])
        value: Any = raw.strip()
        if value.lower() in ("none", "null"):
            value = None
        try:
            out[key] = adapter.validate_python(value, strict=False)
        except ValidationError as e:
            raise IntentRecError(f"{option} {pair!r}: {e.errors()[0]['msg']} (type {known[key]})") from None
    return out
