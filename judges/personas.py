"""Deterministic checks on the planner's personas, run before any expert sees them.

A small model fills a persona with whatever is nearest: a number or a date for the name, or the
prompt's own words ("2 to 4 words", "what this persona shops for") for the focus and evidence. Such a
persona sends an expert off with nothing to reason from, so the graph asks the planner again (within
``Context.regen_limit``) and then replaces what is still defective with a persona built from the user's
own top categories (``category_personas``), counted as a drop with reason ``persona_defect``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from judges.rules import copied_phrase, folded

#: a copied run of words this long from the planner prompt's literal text is a defect
PERSONA_COPY_NGRAM = 3
_LETTER = re.compile(r"[^\W\d_]")
#: a name that is only the schema's word with a number ("persona1", "Persona 2") is a placeholder
_PLACEHOLDER = re.compile(r"^(persona|name|shopper|customer)\s*\d*$", re.I)


def persona_defect(persona: Any, *, prompt_texts: Sequence[str], allowed: str = "") -> str | None:
    """Why ``persona`` (a Persona or its dict) is unusable, or None. ``allowed``: text it may repeat
    (the shared context, whose items and categories the evidence should name)."""
    get = persona.get if isinstance(persona, dict) else lambda k, d="": getattr(persona, k, d)
    name = (get("name", "") or "").strip()
    if not name:
        return "empty name"
    if not _LETTER.search(name):
        return f"name {name!r} has no letters (a number or a date is not a persona)"
    if _PLACEHOLDER.match(name):
        return f"name {name!r} is a placeholder, not a kind of shopper"
    if " ".join(folded(get("focus", "") or "")) == " ".join(folded(name)):
        return "focus only repeats the name; say what this persona buys"
    for field in ("name", "focus", "evidence"):
        value = (get(field, "") or "").strip()
        if field == "focus" and not value:
            return "empty focus"
        copy = copied_phrase(value, prompt_texts, allowed, n=PERSONA_COPY_NGRAM)
        if copy:
            return f"{field} copies the prompt's own words ({copy!r})"
    if allowed and not grounded(f"{get('focus', '')} {get('evidence', '')}", allowed, prompt_texts):
        return "focus and evidence name nothing from the customer's history"
    return None


def grounded(text: str, context: str, prompt_texts: Sequence[str]) -> bool:
    """True when ``text`` shares a content word (3+ letters, not an English stop word) with ``context``
    that the prompts' own literal text does not hold, i.e. a word that can only have come from the
    customer's data. Stop words ("who", "the") also occur in the context's own wording (the tools'
    reasons), so they prove nothing: a prompt echo such as "Focus on the name of the person who buys
    the product" passed on "who"."""
    prompt_words = {w for t in prompt_texts for w in folded(t)}
    words = {w for w in folded(text) if len(w) >= 3 and w not in prompt_words and w not in ENGLISH_STOP_WORDS}
    return bool(words & set(folded(context)))


def persona_defects(personas: Sequence[Any], *, prompt_texts: Sequence[str], allowed: str = "") -> dict[int, str]:
    """``persona_defect`` for each persona, plus: a persona whose focus another one already has adds
    nothing (the planner's answer for three routes is often one persona three times)."""
    out: dict[int, str] = {}
    seen: dict[str, int] = {}
    for i, p in enumerate(personas):
        why = persona_defect(p, prompt_texts=prompt_texts, allowed=allowed)
        focus = " ".join(folded((p.get("focus") if isinstance(p, dict) else getattr(p, "focus", "")) or ""))
        if why is None and focus in seen:
            why = f"same focus as persona {seen[focus] + 1}"
        seen.setdefault(focus, i)
        if why:
            out[i] = why
    return out


def persona_feedback(defects: dict[int, str]) -> str:
    """One line for the planner's retry naming each rejected persona and why."""
    return "; ".join(f"persona {i + 1}: {why}" for i, why in sorted(defects.items())) + \
        ". Name each persona after what it buys, and take focus and evidence from the HISTORY."


def category_personas(categories: Iterable[tuple[str, list[str]]], n: int, taken: set[str]) -> list[dict]:
    """Up to ``n`` personas from (category, example titles) pairs, most bought first, skipping names in
    ``taken`` (lower-cased)."""
    out = []
    for cat, titles in categories:
        if len(out) >= n:
            break
        name = f"{cat.strip().title()} shopper"[:30]
        if not cat.strip() or name.lower() in taken:
            continue
        taken.add(name.lower())
        out.append({"name": name, "focus": f"buys {cat.strip().lower()}"[:80],
                    "evidence": ", ".join(titles[:3])[:80]})
    return out
