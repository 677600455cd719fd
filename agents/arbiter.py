"""Decision Arbiter (RecGPT-V2): picks the final N tags from the experts' joint pool.

Deterministic rules run first, wherever a rule can decide, and every rejection is counted with its
reason (nothing is dropped silently). The rules are the judge's too (``agents.tag_rules``):

* ``empty`` / ``markup``: no letters, or several lines, a URL or markup characters;
* ``vague``: contains a vague word ("stuff", "products", "various", "some", ...);
* ``shape``: not "modifier + core word" (fewer or more words than the expert grammar allows);
* ``brand``: names a brand known in the catalogue;
* ``duplicate``: the same tag as an earlier one after normalisation (case, punctuation, plurals);
* ``recent``: an exact repeat of something bought in the last ``Context.recent_days`` days.

The LLM then judges what rules can't (relevance, seasonality, cross-category diversity) by choosing
numbers from the surviving pool. Invalid numbers are ignored and counted. If it picks fewer than N,
the rest are filled round-robin across personas in pool order, so every persona is represented before
any persona gets a second tag; this fill is recorded as ``filled_by_rule``.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import BaseModel, Field, create_model

from agents.common import call_agent
from agents.context import Context
from agents.tag_rules import brand_keys, keyed, normalize, tag_problems

#: the arbiter's reason for each problem code of :func:`agents.tag_rules.tag_problems`
REASONS = {"lines": "markup", "url": "markup", "markup": "markup", "blank": "empty", "no_letters": "empty",
           "vague": "vague", "too_short": "shape", "too_long": "shape", "brand": "brand",
           "duplicate": "duplicate", "recent": "recent"}


def rule_check(tag: str, *, seen: set[str], brands: set[str], recent: set[str]) -> str | None:
    """The rule that rejects ``tag``, or None if every rule passes. ``seen``, ``brands`` and ``recent``
    hold normalised keys."""
    problems = tag_problems(tag, brands=brands, recent=recent, seen=seen)
    return REASONS[problems[0].code] if problems else None


def apply_rules(pool: list[dict], *, brands: set[str], recent: set[str],
                exclude: set[str] = frozenset()) -> tuple[list[dict], list[dict]]:
    """Split the pool into (kept, rejected). Rejected entries carry ``reason``. ``exclude`` holds
    normalised tags already rejected by the judge."""
    brands_n = set(brand_keys(brands))
    recent_n = set(keyed(recent))
    seen: set[str] = set()
    kept, rejected = [], []
    for p in pool:
        norm = normalize(p["tag"])
        why = "judged_b" if norm in exclude else rule_check(p["tag"], seen=seen, brands=brands_n, recent=recent_n)
        if why:
            rejected.append({**p, "reason_rejected": why})
        else:
            seen.add(norm)
            kept.append(p)
    return kept, rejected


@lru_cache(maxsize=16)
def arbiter_schema(n: int, pool_size: int) -> type[BaseModel]:
    return create_model(
        "ArbiterOutput",
        chosen=(list[int], Field(min_length=1, max_length=max(1, min(n, pool_size)))),
        reason=(str, Field(default="", max_length=200)),
    )


def round_robin_fill(pool: list[dict], chosen: list[int], n: int) -> list[int]:
    """Fill ``chosen`` up to ``n`` from the pool, cycling over personas in pool order."""
    out = list(chosen)
    by_persona: dict[str, list[int]] = {}
    for i, p in enumerate(pool):
        if i not in out:
            by_persona.setdefault(p.get("persona", ""), []).append(i)
    queues = list(by_persona.values())
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def arbitrate(ctx: Context, shared_context: str, pool: list[dict], feedback: str = "",
              n: int | None = None) -> tuple[list[int], dict, int]:
    """Choose ``n`` (default ``ctx.n_tags``) tags from ``pool``. Return (chosen indexes into ``pool``,
    call stat, number of invalid indexes ignored)."""
    n = min(ctx.n_tags if n is None else n, len(pool))
    out, stat = call_agent(ctx, node="arbiter", role="arbiter", template="arbiter",
                           schema=arbiter_schema(n, len(pool)), shared_context=shared_context,
                           pool=pool, n=n, feedback=feedback)
    chosen: list[int] = []
    invalid = 0
    for i in out.chosen:
        if 0 <= i < len(pool) and i not in chosen:
            chosen.append(i)
        else:
            invalid += 1
    picked = chosen[:n]
    full = round_robin_fill(pool, picked, n)
    stat["filled_by_rule"] = len(full) - len(picked)
    return full, stat, invalid
