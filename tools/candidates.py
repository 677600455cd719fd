"""The tag candidate pool: the four tools' results for one user, merged, and their own ranking.

``candidate_pool`` unions the tools' lists (deduplicated by the tag rules' normalised phrase, first tool
wins, in the order own, collaborative, complement, season). In catalogue mode the pool is the expert's
grammar enum; in open mode it is evidence. ``tools_only_ranking`` is the no-LLM ablation: the tools'
lists interleaved by a fixed quota, so the evaluation can show what the model adds to its own tools.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from agents.tag_rules import normalize
from tools.tag_stats import Candidate, TagStats, collaborative_new, complements, own_types, seasonal

#: candidates per tool in the pool
PER_TOOL: Mapping[str, int] = {"own": 40, "collaborative": 25, "complement": 20, "season": 15}
#: the tools-only ranking's interleave: how many to take from each tool per round, in this order
INTERLEAVE: tuple[tuple[str, int], ...] = (("own", 2), ("collaborative", 1), ("complement", 1), ("season", 1))

_TOOLS = {"own": own_types, "collaborative": collaborative_new, "complement": complements, "season": seasonal}


def candidate_pool(stats: TagStats, user_id: str, per_tool: Mapping[str, int] | None = None) -> list[Candidate]:
    """Every tool's candidates for ``user_id``, deduplicated by normalised phrase, grouped by tool."""
    per_tool = {**PER_TOOL, **(per_tool or {})}
    seen: set[str] = set()
    out: list[Candidate] = []
    for name, fn in _TOOLS.items():
        for c in fn(stats, user_id, n=per_tool[name]):
            key = normalize(c.phrase)
            if key not in seen:
                seen.add(key)
                out.append(c)
    return out


def tools_only_ranking(pool: Sequence[Candidate], n: int = 30) -> list[Candidate]:
    """The pool in the tools' own order, interleaved by ``INTERLEAVE`` quotas, cut to ``n``; a tool
    that runs out leaves its share to the others."""
    queues = {name: [c for c in pool if c.tool == name] for name, _ in INTERLEAVE}
    out: list[Candidate] = []
    while len(out) < n and any(queues.values()):
        for name, quota in INTERLEAVE:
            q = queues[name]
            take, queues[name] = q[:quota], q[quota:]
            out.extend(take[:n - len(out)])
    return out
