"""Explainer with meta-prompting (RecGPT-V2).

Stage 1 writes a *style guideline* from the intent, the item and the situation; stage 2 writes the
one-line explanation following it. Two calls per item instead of one template is what makes the
explanations vary from item to item. The explanation may only state facts found in the item's own
attributes or the user's evidence; the judge's factuality rule checks it.
"""

from __future__ import annotations

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
    text: str = Field(min_length=8, max_length=200)


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


def explain(ctx: Context, *, item: dict, intent: str, persona: str, evidence: str,
            feedback: str = "") -> tuple[str, str, list[dict]]:
    """Return (explanation, guideline text, call stats)."""
    facts = item_facts_text(item)
    guide, s1 = call_agent(ctx, node="explain", role="explainer", template="explainer_style", schema=StyleGuideline,
                           subject=item["item_id"], intent=intent, persona=persona, item_title=item["title"],
                           item_facts=facts, environment=ctx.env.describe())
    expl, s2 = call_agent(ctx, node="explain", role="explainer", template="explainer", schema=Explanation,
                          subject=item["item_id"], guideline=guide.text(), intent=intent, item_title=item["title"],
                          item_facts=facts, evidence=evidence, feedback=feedback)
    text = " ".join(expl.text.split())
    return text, guide.text(), [s1, s2]


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
    if tag:
        return f"{name}: it matches {' '.join(tag.split())}, an interest read from your history."
    return f"{name}: often bought by households whose baskets look like yours."
