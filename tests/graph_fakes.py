"""Test doubles for graph tests: a scripted model answering every agent schema, and a deterministic
retriever over a real slice of the catalogue. They exist so graph logic can be tested in isolation;
the real retriever and models have their own tests and the end-to-end run uses them."""

from __future__ import annotations

import re
import typing

from evals.bench_fixtures import SliceRetriever, fill_schema  # noqa: F401  (fill_schema re-exported)
from llm.scripted import ScriptedChatModel, by_schema

AGENT_SCHEMAS = {"PlannerOutput", "ExpertOutput", "ArbiterOutput", "StyleGuideline", "Explanation"}


def planner_answer(k: int = 3, messages=None) -> dict:
    """K personas; with the prompt given, each one's focus names one of the SUMMARY's top categories, as
    a grounded planner would (the persona checks reject personas that name nothing from the history)."""
    names = ["Family Cook", "Snack Lover", "Home Care", "Fresh Eater", "Baker"][:k]
    text = "\n".join(str(m.content) for m in messages or [])
    cats = re.findall(r"«([^»]+)» \(\d+\)", text.split("top categories:", 1)[1]) if "top categories:" in text else []
    cats = cats or ["frequent purchases"]
    return {"personas": [{"name": n, "focus": f"{n.lower()} shopping: {cats[i % len(cats)].lower()}",
                          "evidence": cats[i % len(cats)]} for i, n in enumerate(names)]}


def expert_answer(messages) -> dict:
    text = str(messages[-1].content)
    persona = text.split("PERSONA: «", 1)[1].split("»", 1)[0] if "PERSONA: «" in text else "x"
    base = persona.split()[0].lower()
    n = int(re.search(r"Write up to (\d+) item tags", text).group(1))
    pool = [{"tag": f"{base} organic cereal", "intent": 0},
            {"tag": f"{base} frozen pizza", "intent": 0}]
    return {"intents": [{"interest": f"{base} refresh", "reason": "seasonal"}], "tags": pool[:n]}


def arbiter_answer(messages) -> dict:
    """Choose every candidate, in order, up to the N the prompt asks for."""
    text = str(messages[-1].content)
    n_pool = sum(1 for line in text.splitlines() if re.match(r"^\d+: «", line))
    n = int(re.search(r"Choose the (\d+) best", text).group(1))
    return {"chosen": list(range(min(n, n_pool))), "reason": "diverse"}


def make_model(*, judge_outcome: str | typing.Callable = "good", k: int = 3, latency_s: float = 0.0,
               extra_rules: list | None = None) -> ScriptedChatModel:
    def judge_rule(messages, schema):
        if schema is None or schema.__name__ in AGENT_SCHEMAS:
            return None
        outcome = judge_outcome(messages, schema) if callable(judge_outcome) else judge_outcome
        return fill_schema(schema, outcome)

    rules = [*(extra_rules or []),
             by_schema("PlannerOutput", lambda messages: planner_answer(k, messages)),
             by_schema("ExpertOutput", expert_answer),
             by_schema("ArbiterOutput", arbiter_answer),
             by_schema("StyleGuideline", {"tone": "warm", "angle": "habit", "avoid": "hype"}),
             by_schema("Explanation", {"text": "A handy pick that fits the way this household already shops."}),
             judge_rule]
    return ScriptedChatModel(rules=rules, latency_s=latency_s)


class FakeRetriever(SliceRetriever):
    """The benchmark's deterministic slice retriever (the i-th item of a fixed real item list for the
    i-th (tag, slot)), recording every call."""

    def __init__(self, items: list[dict]):
        super().__init__(items)
        self.calls: list[dict] = []

    def search(self, user_id, tags, k, *, beta=None, per_tag_quota=None, exclude_items=None,
               min_discovery_share=None):
        self.calls.append({"user_id": user_id, "tags": list(tags), "k": k, "beta": beta,
                           "min_discovery_share": min_discovery_share})
        return super().search(user_id, tags, k, beta=beta, per_tag_quota=per_tag_quota, exclude_items=exclude_items)
