"""Explainer with meta-prompting (RecGPT-V2).

Stage 1 writes a *style guideline* per persona from its intents, its items and the situation
(:func:`style_for`); stage 2 writes each item's one-line explanation following its persona's
guideline (:func:`explain`). One guideline per persona rather than per item keeps the
meta-prompting (lines differ between personas and situations) at K + items calls instead of
2 × items; a regenerated explanation reuses its guideline and costs one call. The explanation may
only state facts found in the item's own attributes or the user's evidence; the judge's factuality
rule checks it.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

from agents.common import call_agent
from agents.context import Context


class StyleGuideline(BaseModel):
    tone: str = Field(min_length=1, max_length=40)
    angle: str = Field(min_length=1, max_length=120)
    avoid: str = Field(default="", max_length=120)

    def text(self) -> str:
        s = f"tone: {self.tone}; angle: {self.angle}"
        return s + (f"; avoid: {self.avoid}" if self.avoid else "")


class Explanation(BaseModel):
    text: str = Field(min_length=8, max_length=160)


def item_facts_text(item: dict) -> str:
    parts = [f"category: {item.get('category', '')}"]
    path = item.get("category_path") or []
    if path:
        parts.append("path: " + " > ".join(path))
    if item.get("brand"):
        parts.append(f"brand: {item['brand']}")
    for k, v in (item.get("attributes") or {}).items():
        parts.append(f"{k}: {v}")
    return "; ".join(parts)


def style_for(ctx: Context, *, persona: str, intents: list[str], titles: list[str]) -> tuple[str, dict]:
    """Stage 1: one style guideline for all of ``persona``'s items. Returns (guideline text, call stat)."""
    guide, stat = call_agent(ctx, node="style", role="explainer", template="explainer_style", schema=StyleGuideline,
                             subject=persona, persona=persona, intents="; ".join(dict.fromkeys(intents)),
                             items="; ".join(titles), environment=ctx.env.describe())
    return guide.text(), stat


def explain(ctx: Context, *, item: dict, guideline: str, intent: str, evidence: str,
            feedback: str = "") -> tuple[str, dict]:
    """Stage 2: one item's line following its persona's guideline. Returns (explanation, call stat)."""
    expl, stat = call_agent(ctx, node="explain", role="explainer", template="explainer", schema=Explanation,
                            subject=item["item_id"], guideline=guideline, intent=intent, item_title=item["title"],
                            item_facts=item_facts_text(item), evidence=evidence, feedback=feedback)
    return " ".join(expl.text.split()), stat


def facts_explanation(title: str, category: str, *, item_count: int, category_count: int, tag: str | None) -> str:
    """One plain sentence stated only from facts about the item and the user's own history: the
    explanation fallback when the model's texts keep failing the judge (``Context.explanation_fallback``).
    No counts or dates: the factuality rule accepts only numbers the item facts or evidence hold."""
    name = " ".join(title.split()) or "This item"
    cat = " ".join((category or "").split()).lower()
    if item_count >= 3:
        return f"{name}: a regular in your basket, bought again and again."
    if item_count:
        return f"{name}: you have bought it before."
    if cat and category_count >= 3:
        return f"{name}: from {cat}, a kind of product you buy often."
    if cat and category_count:
        return f"{name}: from {cat}, a kind of product you have tried."
    if tag and not _same_words(tag, name):  # "Bread:Italian/French: it matches bread italian french" repeats itself
        return f"{name}: it matches {' '.join(tag.split())}, an interest read from your history."
    return f"{name}: often bought by households whose baskets look like yours."


def _same_words(a: str, b: str) -> bool:
    """Whether every word of ``a`` is a word of ``b`` (case and punctuation ignored)."""
    def ws(x: str) -> set[str]:
        return set(re.findall(r"[a-z0-9]+", x.lower()))
    return ws(a) <= ws(b)
