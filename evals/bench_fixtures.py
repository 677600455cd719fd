"""Stand-ins for the system benchmark's framework measurements (``bench system``), never the product.

* :func:`agent_model`: a :class:`~llm.scripted.ScriptedChatModel` that answers every agent and judge
  schema of the graph with a valid object, optionally after a fixed per-call delay. With delay 0 a
  run costs only the orchestration (LangGraph, the run log, checkpoints, prompt rendering,
  validation); with a delay it stands for a model server that is never the bottleneck.
* :class:`SliceRetriever`: a deterministic retriever over a real slice of the catalogue, so the
  scripted runs measure orchestration and not the towers (the real retriever is timed on its own in
  the ``retrieval`` section).

Answers are built from the schema the graph asks for, so they stay valid when the agents' schemas
change shape: the planner gets exactly K personas, an expert in ``catalogue`` tag mode picks tags
from the enum it is offered (a different slice per persona), the arbiter chooses as many indexes as
the schema allows, every judge dimension is graded "good".
"""

from __future__ import annotations

import hashlib
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel

from llm.scripted import ScriptedChatModel

PERSONAS = ["Family Cook", "Snack Lover", "Home Care", "Fresh Eater", "Baker", "Pet Owner", "Party Host"]
OPEN_TAGS = ["organic cereal", "frozen pizza", "whole wheat bread", "hot cocoa mix", "frozen fruit bars",
             "sparkling water"]
AGENT_SCHEMAS = ("PlannerOutput", "ExpertOutput", "ArbiterOutput", "StyleGuideline", "Explanation")


def _fill(ann: Any, outcome: str = "good") -> Any:
    origin = get_origin(ann)
    if origin is Literal:
        args = get_args(ann)
        return outcome if outcome in args else args[0]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in get_args(ann) if a is not type(None)]
        return _fill(args[0], outcome)
    if origin in (list, tuple):
        return []
    if origin is dict:
        return {}
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return fill_schema(ann, outcome)
    if ann is bool:
        return outcome == "good"
    if ann in (int, float):
        return 5
    return "fine"


def fill_schema(schema: type[BaseModel], outcome: str = "good") -> dict[str, Any]:
    """A valid instance of a flat (judge) schema: Literal fields take ``outcome`` when allowed."""
    return {name: _fill(f.annotation, outcome) for name, f in schema.model_fields.items()}


def _last_text(messages: list[Any]) -> str:
    return str(messages[-1].content) if messages else ""


@lru_cache(maxsize=256)
def _json_schema(schema: type[BaseModel]) -> dict[str, Any]:
    """Cached: building a JSON schema costs more than the rest of a scripted answer."""
    return schema.model_json_schema()


def _items_bounds(schema: type[BaseModel], name: str) -> tuple[int, int]:
    prop = _json_schema(schema)["properties"][name]
    lo = int(prop.get("minItems", 1))
    return lo, int(prop.get("maxItems", max(lo, 1)))


def _answer(messages: list[Any], schema: type[BaseModel] | None) -> Any:
    if schema is None:
        return None
    name = schema.__name__
    if name == "PlannerOutput":
        k, _ = _items_bounds(schema, "personas")
        return {"personas": [{"name": PERSONAS[i % len(PERSONAS)] + ("" if i < len(PERSONAS) else f" {i}"),
                              "focus": "weekly groceries", "evidence": "frequent purchases"} for i in range(k)]}
    if name == "ExpertOutput":
        _, n = _items_bounds(schema, "tags")
        text = _last_text(messages)
        seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
        tag_schema = _json_schema(schema)
        item = tag_schema["properties"]["tags"]["items"]
        ref = item.get("$ref", "").rsplit("/", 1)[-1]
        tag_prop = (tag_schema.get("$defs", {}).get(ref) or item).get("properties", {}).get("tag", {})
        pool = list(tag_prop.get("enum") or OPEN_TAGS)
        start = seed % len(pool)
        tags = [pool[(start + i) % len(pool)] for i in range(min(n, len(pool)))]
        return {"intents": [{"interest": "weekly refresh", "reason": "seasonal"}],
                "tags": [{"tag": t, "intent": 0} for t in tags]}
    if name == "ArbiterOutput":
        _, n = _items_bounds(schema, "chosen")
        return {"chosen": list(range(n)), "reason": "diverse"}
    if name == "StyleGuideline":
        return {"tone": "warm", "angle": "habit", "avoid": "hype"}
    if name == "Explanation":
        return {"text": "A handy pick that fits the way this household already shops."}
    return fill_schema(schema, "good")


def agent_model(latency_s: float = 0.0) -> ScriptedChatModel:
    """A scripted model answering every schema of the graph (agents and judges), ``latency_s`` per call."""
    return ScriptedChatModel(rules=[_answer], latency_s=latency_s, model_name="scripted-agents")


@dataclass
class SliceCandidate:
    item_id: str
    title: str
    category: str
    score: float
    tags: list[str]
    sources: list[str]
    user_score: float | None = None
    tag_score: float | None = None


@dataclass
class SliceResult:
    candidates: list[SliceCandidate]
    user_known: bool = True
    flags: list[str] = field(default_factory=list)


class SliceRetriever:
    """Deterministic and instant: the i-th item of a fixed catalogue slice for the i-th slot."""

    def __init__(self, items: list[dict[str, Any]]):
        self.items = items

    @classmethod
    def from_dataset(cls, dataset: Any, n: int = 64) -> SliceRetriever:
        return cls(dataset.items.filter(dataset.items["category"] != "").head(n).to_dicts())

    def search(self, user_id: str, tags: list[str], k: int, *, beta: float | None = None,
               per_tag_quota: int | None = None, exclude_items: Any = None,
               min_discovery_share: float | None = None) -> SliceResult:
        out = []
        for i, it in enumerate(self.items[:k]):
            tag = tags[i % len(tags)] if tags else None
            out.append(SliceCandidate(item_id=str(it["item_id"]), title=str(it["title"]), category=str(it["category"]),
                                      score=1.0 - i * 0.01, tags=[tag] if tag else [],
                                      sources=["tag", "user"] if tag else ["user"]))
        return SliceResult(candidates=out)


#: the per-call delay (ms) of :func:`scripted_factory`'s model, read in each ``batch --workers`` process
DELAY_ENV = "INTENTREC_BENCH_DELAY_MS"


def scripted_rec(dataset: Any, *, delay_s: float, runlog: Any, retriever: Any = None, **ctx: Any) -> Any:
    """The bench's stand-in recommender: the scripted model at ``delay_s`` per call and the slice
    retriever (unless ``retriever`` is given), recording into ``runlog``."""
    from intentrec.service import IntentRec

    return IntentRec(dataset=dataset, retriever=retriever or SliceRetriever.from_dataset(dataset),
                     models={"default": agent_model(delay_s)}, runlog=runlog, **ctx)


def scripted_factory(store: Any) -> Any:
    """``batch --factory evals.bench_fixtures:scripted_factory``: :func:`scripted_rec` over the
    default dataset at ``DELAY_ENV`` ms per call, recording into ``store``; what the bench's thread
    variants run, for the ``--workers`` processes."""
    import os

    from behavior.adapters import load_dataset_cached

    return scripted_rec(load_dataset_cached(None), delay_s=float(os.environ.get(DELAY_ENV, "0")) / 1000, runlog=store)
