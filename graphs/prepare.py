"""Build the shared context C for one user (RecGPT-V2): compressed behaviours + structured summary +
user attributes + environment, rendered once per run with the ``shared_context`` template.

Only history strictly before ``Context.env.now`` is used, so a run "as of" a past date sees no
future behaviour (offline evaluation relies on this). The rendered text is the identical prefix of
every planner, expert and arbiter prompt in the run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agents.context import Context
from behavior.compress import compress_history
from behavior.schema import Dataset
from prompts.registry import fence_untrusted
from tools.candidates import candidate_pool, tools_only_ranking
from tools.tag_stats import TagStats, as_dicts, product_type


@dataclass
class PreparedContext:
    shared_context: str
    evidence: str
    recent_purchases: list[str]
    stats: dict[str, Any] = field(default_factory=dict)
    #: the phrases the expert may choose in the ``catalogue`` tag mode: the candidate tools' pool, or
    #: (a user the tools know nothing about) catalogue product types near the user's categories
    tag_vocabulary: list[str] = field(default_factory=list)
    #: the candidate tools' phrases for this user in the tools' own ranking: {phrase, category, tool, score, why}
    tag_candidates: list[dict] = field(default_factory=list)


_TYPES_BY_CATEGORY: dict[int, dict[str, list[str]]] = {}


def types_by_category(dataset: Dataset) -> dict[str, list[str]]:
    """category -> distinct product-type phrases (lower case, 2–4 plain words), computed once."""
    key = id(dataset)
    if key not in _TYPES_BY_CATEGORY:
        rows = dataset.items.select("category", "title").unique()
        out: dict[str, set[str]] = {}
        for cat, title in rows.iter_rows():
            phrase = product_type(title)
            if cat and phrase:
                out.setdefault(cat, set()).add(phrase)
        _TYPES_BY_CATEGORY[key] = {c: sorted(v) for c, v in out.items()}
    return _TYPES_BY_CATEGORY[key]


def tag_vocabulary(dataset: Dataset, categories: list[str], exclude: set[str], limit: int = 150) -> list[str]:
    """Product types of the user's top categories, round-robin across categories, minus ``exclude``."""
    by_cat = types_by_category(dataset)
    queues = [[t for t in by_cat.get(c, []) if t not in exclude] for c in categories]
    out: list[str] = []
    while len(out) < limit and any(queues):
        for q in queues:
            if q and len(out) < limit:
                t = q.pop(0)
                if t not in out:
                    out.append(t)
    return out


def tool_candidates(dataset: Dataset, user_id: str, now: Any) -> list[dict]:
    """The candidate tools' pool for ``user_id`` from data before ``now``, in the tools-only ranking
    (``tools.candidates``); the statistics behind it are computed once per dataset and date."""
    pool = candidate_pool(TagStats.build(dataset, now), user_id)
    return as_dicts(tools_only_ranking(pool, n=len(pool)))


def candidates_text(cands: list[dict], per_tool: int) -> dict[str, list[dict]]:
    """Tool -> its first ``per_tool`` candidates, for the shared context's CANDIDATES section (empty,
    so no section, at ``per_tool`` 0)."""
    out: dict[str, list[dict]] = {}
    for c in cands:
        if per_tool > 0 and len(out.setdefault(c["tool"], [])) < per_tool:
            out[c["tool"]].append(c)
    return out


def _default_counter() -> Callable[[str], int]:
    from behavior.tokens import default_counter

    return default_counter()


def prepare_user(dataset: Dataset, user_id: str, ctx: Context, *,
                 count_tokens: Callable[[str], int] | None = None,
                 interests: Callable[..., list[str]] | None = None,
                 candidates: Callable[[Dataset, str, Any], list[dict]] | None = tool_candidates) -> PreparedContext:
    """``interests(user_id, now)`` (the retriever's HiSAC agents in words, when it has them) adds the
    user's interest agents to the SUMMARY, each fenced, as persona evidence for the planner.
    ``candidates(dataset, user_id, now)`` gives the candidate tools' pool (None: no tools); its first
    phrases per tool go into the shared context as evidence, and the whole pool is the expert's enum
    in the ``catalogue`` tag mode."""
    now = ctx.env.now
    hist = dataset.history_with_items(user_id, before=now)
    counter = count_tokens or _default_counter()
    comp = compress_history(hist, count_tokens=counter, budget=ctx.history_budget, now=now,
                            weights=dataset.weights)
    summary, st = comp.summary, comp.stats
    top = ", ".join(f"{c.category} ({c.count})" for c in summary.top_categories[:8])
    # category and behaviour names are dataset strings: each is fenced on its own in the SUMMARY
    fenced_top = ", ".join(f"{fence_untrusted(c.category, 60)} ({c.count})" for c in summary.top_categories[:8])
    behaviours = ", ".join(f"{fence_untrusted(b, 30)}: {n}" for b, n in summary.behavior_counts.items())
    summary_text = (f"{st.events_total} events ({behaviours}) from {summary.first_date} to {summary.last_date}; "
                    f"top categories: {fenced_top}.")
    agents = interests(user_id, now) if interests is not None else []
    if agents:
        summary_text += " Interest agents: " + "; ".join(fence_untrusted(a, 80) for a in agents[:4]) + "."
    recent = sorted({rp.label for rp in summary.recent_purchases if rp.days_ago <= ctx.recent_days})
    user = dataset.user(user_id)
    cands = candidates(dataset, user_id, now) if candidates is not None else []
    template = ctx.prompts.get("shared_context")
    # an override template written before the CANDIDATES section existed still renders
    extra = {"candidates": candidates_text(cands, ctx.evidence_per_tool)} if "candidates" in template.variables else {}
    shared = template.render(history=comp.text, summary=summary_text, user_attributes=user.attributes,
                             environment=ctx.env.describe(), **extra)[0].content
    evidence = f"often buys {top}" if top else ""
    stats = {"interest_agents": len(agents), "raw_tokens": st.raw_tokens, "compressed_tokens": st.compressed_tokens,
             "within_budget": st.within_budget, "items_total": st.distinct_items_kept,
             "items_retained": st.distinct_items_retained}
    vocab = [c["phrase"] for c in cands if c["phrase"] not in recent] or tag_vocabulary(
        dataset, [c.category for c in summary.top_categories[:10]], exclude=set(recent))
    if ctx.catalogue_size is not None:
        vocab = vocab[:ctx.catalogue_size]
    stats["tag_candidates"] = len(cands)
    return PreparedContext(shared_context=shared, evidence=evidence[:300], recent_purchases=recent, stats=stats,
                           tag_vocabulary=vocab, tag_candidates=cands)
