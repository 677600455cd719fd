"""Top-K metrics for full-ranking evaluation (RecBole conventions), per user and aggregated.

Per user, for a ranked list ``r`` and a relevant set ``R`` (distinct items bought in the test window):

* ``Recall@K = |r[:K] ∩ R| / |R|``;
* ``NDCG@K = DCG/IDCG`` with binary gains, ``DCG = Σ_{i<K, r_i∈R} 1/log2(i+2)`` and IDCG the DCG of
  ``min(|R|, K)`` hits at the top;
* ``HitRate@K = 1`` if any of ``r[:K]`` is in ``R``;
* ``diversity@K``: number of distinct categories in ``r[:K]``;
* ``tail@K``: share of ``r[:K]`` outside the head set (the most popular 20% of the catalogue by
  training purchases).

Accuracy metrics are undefined (None) for a user whose relevant set is empty, and are averaged only
over users where they are defined; that is what makes the *repeat* and *explore* splits meaningful
(a user who bought nothing new is not counted as an explore miss). ``coverage@K`` is one number for a
method: distinct items recommended in anyone's top K divided by the catalogue size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence


def recall_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float | None:
    if not relevant:
        return None
    return sum(1 for x in ranked[:k] if x in relevant) / len(relevant)


def ndcg_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float | None:
    if not relevant:
        return None
    dcg = sum(1.0 / math.log2(i + 2) for i, x in enumerate(ranked[:k]) if x in relevant)
    idcg = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return dcg / idcg


def hit_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float | None:
    if not relevant:
        return None
    return 1.0 if any(x in relevant for x in ranked[:k]) else 0.0


def category_diversity(ranked: Sequence[str], category_of: Callable[[str], str] | Mapping[str, str], k: int) -> int:
    get = category_of.get if isinstance(category_of, Mapping) else category_of
    return len({get(x) for x in ranked[:k]} - {None})


def tail_share(ranked: Sequence[str], head: set[str], k: int) -> float | None:
    top = ranked[:k]
    if not top:
        return None
    return sum(1 for x in top if x not in head) / len(top)


def coverage(lists: Iterable[Sequence[str]], catalogue_size: int, k: int) -> float:
    if catalogue_size <= 0:
        return 0.0
    seen: set[str] = set()
    for r in lists:
        seen.update(r[:k])
    return len(seen) / catalogue_size


def _mean(xs: Iterable[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


ACCURACY = {"recall": recall_at_k, "ndcg": ndcg_at_k, "hit": hit_at_k}
SPLITS = ("all", "repeat", "explore")


def evaluate_lists(recs: Mapping[str, Sequence[str]], relevant: Mapping[str, Mapping[str, set[str]]],
                   ks: Sequence[int], category_of: Mapping[str, str], head: set[str],
                   catalogue_size: int) -> dict[str, float | None]:
    """Aggregate metrics for one method.

    ``relevant[user] = {"all": set, "repeat": set, "explore": set}``; users missing from ``recs`` get an
    empty list (every accuracy figure 0 where defined). Keys look like ``recall@50/explore``,
    ``diversity@10``, ``tail@50``, ``coverage@50``."""
    out: dict[str, float | None] = {}
    users = list(relevant)
    for k in ks:
        for name, fn in ACCURACY.items():
            for split in SPLITS:
                out[f"{name}@{k}/{split}"] = _mean(fn(recs.get(u, []), relevant[u][split], k) for u in users)
        out[f"diversity@{k}"] = _mean(category_diversity(recs.get(u, []), category_of, k) for u in users)
        out[f"tail@{k}"] = _mean(tail_share(recs.get(u, []), head, k) for u in users)
        out[f"coverage@{k}"] = coverage((recs.get(u, []) for u in users), catalogue_size, k)
    return out
