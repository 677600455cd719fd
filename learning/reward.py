"""The constrained reward of RecGPT-V2 (CRS) for one expert answer ([6/7], self-training and GRPO).

RecGPT-V2's finding: summing accuracy with the other rewards let the policy trade accuracy for easy
points and scored below SFT; gating accuracy on the others did not. So:

* ``acc`` (R_acc): recall of the next window's categories by the tags' categories, a category the
  household never bought counting ``new_weight`` times (discovery is what the tags are for).
* gates, each a threshold:
    * ``pass``: the share of tags that break none of the tag rules the arbiter and the judge share
      (``agents.tag_rules.tag_problems``: vague, shape, brand, duplicate, recent purchase), at least
      ``min_pass``; a repeated tag fails as a duplicate, which is the embedded model's commonest fault;
    * ``div`` (R_div): mean pairwise ``1 - cos`` of the tags' text embeddings, as ``eval tags``
      computes it (``evals.tag_eval.mean_pairwise_distance``), at least ``min_div``;
    * ``length``: between ``min_tags`` and ``max_tags`` tags.
* ``crs`` = ``acc`` when every gate passes, else 0; ``summed`` = the mean of ``acc``, the pass
  share, ``div`` and the length indicator: the ablation the paper reports as worse.

An answer that is not valid JSON in the expert's shape scores 0 on everything.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agents.tag_rules import normalize, tag_problems
from evals.tag_eval import mean_pairwise_distance


@dataclass(frozen=True)
class RewardConfig:
    new_weight: float = 2.0
    min_pass: float = 0.8
    min_div: float = 0.2
    min_tags: int = 5
    max_tags: int = 15


@dataclass
class Reward:
    acc: float = 0.0
    pass_share: float = 0.0
    div: float = 0.0
    n_tags: int = 0
    gates: dict[str, bool] = field(default_factory=lambda: {"valid": False, "pass": False, "div": False, "length": False})
    crs: float = 0.0
    summed: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parse_tags(text: str) -> list[str] | None:
    """The tags of an expert answer, or None when it is not a JSON object with a ``tags`` list."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    tags = obj.get("tags") if isinstance(obj, dict) else None
    if not isinstance(tags, list):
        return None
    out = []
    for t in tags:
        tag = t.get("tag") if isinstance(t, dict) else None
        if not isinstance(tag, str):
            return None
        out.append(tag)
    return out


def accuracy(tags: Sequence[str], tag_category: Mapping[str, str], targets: Collection[str],
             new: Collection[str], new_weight: float) -> float:
    """Weighted recall of ``targets`` (categories) by the tags' categories; new ones weigh ``new_weight``."""
    if not targets:
        return 0.0
    cats = {tag_category.get(normalize(t)) for t in tags} - {None}
    w = {c: new_weight if c in new else 1.0 for c in targets}
    return sum(w[c] for c in cats if c in w) / sum(w.values())


def score(text: str, *, tag_category: Mapping[str, str], targets: Collection[str], new: Collection[str],
          embed: Callable[[list[str]], np.ndarray], brands: Collection[str] = (), recent: Collection[str] = (),
          config: RewardConfig = RewardConfig()) -> Reward:
    """The reward of one answer. ``tag_category``: normalised phrase -> category (the catalogue's
    mapping); ``targets``: the window's categories; ``new``: those the household never bought;
    ``brands`` / ``recent``: normalised keys as the arbiter's rules take them."""
    tags = parse_tags(text)
    if tags is None:
        return Reward()
    seen: set[str] = set()
    ok = 0
    for t in tags:
        if not tag_problems(t, brands=brands, recent=recent, seen=seen):
            ok += 1
        seen.add(normalize(t))
    r = Reward(n_tags=len(tags))
    r.pass_share = ok / len(tags) if tags else 0.0
    r.div = (mean_pairwise_distance(embed(tags)) or 0.0) if len(tags) >= 2 else 0.0
    r.acc = accuracy(tags, tag_category, targets, new, config.new_weight)
    r.gates = {"valid": True, "pass": r.pass_share >= config.min_pass, "div": r.div >= config.min_div,
               "length": config.min_tags <= len(tags) <= config.max_tags}
    r.crs = r.acc if all(r.gates.values()) else 0.0
    r.summed = (r.acc + r.pass_share + min(r.div, 1.0) + float(r.gates["length"])) / 4
    return r


__all__ = ["Reward", "RewardConfig", "accuracy", "parse_tags", "score"]
