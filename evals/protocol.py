"""The offline evaluation protocol, declared once and shared by every method (RecBole style).

* **Temporal split** at ``cutoff`` T: everything strictly before T is training data (for every user,
  evaluated or not); the test set of a user is the *distinct* items they bought in ``[T, T + window)``.
* **Users**: at least ``min_train_events`` target-behaviour rows before T and at least one in the window.
* **Repeat / explore** (Li et al., "A Next Basket Recommendation Reality Check"): a test item is a
  *repeat* if the user bought it before T, otherwise *explore*.
* **Full ranking** over the whole catalogue; metrics at ``ks`` (see ``evals/metrics.py``).
* **Head items** for the tail-share metric: the most popular ``head_share`` of the catalogue by
  training purchases (ties by item id).

On completejourney the calibrated defaults are T = 2017-10-01, a 28-day window and >= 20 purchases
(about 1,950 users, 37% of test items are repeats). For other datasets without a calibrated
cutoff, T defaults to the last ``window_days`` of the data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from behavior.schema import Dataset
from core.errors import DataError

CALIBRATED_CUTOFFS = {"completejourney": datetime(2017, 10, 1)}


@dataclass(frozen=True)
class Protocol:
    cutoff: datetime | None = None
    window_days: int = 28
    min_train_events: int = 20
    target_behaviors: tuple[str, ...] = ("purchase",)
    ks: tuple[int, ...] = (10, 50)
    head_share: float = 0.2
    seed: int = 42
    max_users: int | None = None  # evaluate a seeded sample of users (quick runs only)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["cutoff"] = self.cutoff.isoformat() if self.cutoff else None
        d["ks"] = list(self.ks)
        d["target_behaviors"] = list(self.target_behaviors)
        return d


@dataclass
class Split:
    protocol: Protocol
    cutoff: datetime
    end: datetime
    train: pl.DataFrame  # every behaviour row before the cutoff
    users: list[str]  # evaluated users, sorted
    relevant: dict[str, dict[str, set[str]]]  # user -> {"all", "repeat", "explore"}
    train_counts: dict[str, dict[str, int]]  # user -> item -> target-behaviour count before T
    last_seen: dict[str, dict[str, datetime]]  # user -> item -> last target-behaviour time before T
    item_pop: dict[str, int]  # item -> target-behaviour rows before T (all users)
    head: set[str]
    category_of: dict[str, str]
    catalogue: list[str]
    stats: dict = field(default_factory=dict)


def resolve_cutoff(dataset: Dataset, protocol: Protocol | None = None) -> datetime:
    """T: the protocol's cutoff, else the dataset's calibrated one, else the start of the last window."""
    p = protocol or Protocol()
    b = dataset.behaviors
    if b.height == 0:
        raise DataError(f"dataset {dataset.name!r} has no behaviours to evaluate")
    return p.cutoff or CALIBRATED_CUTOFFS.get(dataset.name) or (b["ts"].max() - timedelta(days=p.window_days))


def validation_protocol(dataset: Dataset, protocol: Protocol | None = None) -> Protocol:
    """The protocol moved back one window (cutoff T − window): where parameters are chosen."""
    p = protocol or Protocol()
    return replace(p, cutoff=resolve_cutoff(dataset, p) - timedelta(days=p.window_days))


def seeded_sample(users: list[str], n: int, seed: int) -> list[str]:
    """``n`` of the sorted ``users`` (all when there are no more), numpy ``default_rng(seed).choice``, sorted."""
    if len(users) <= n:
        return users
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(np.array(users, dtype=object), size=n, replace=False).tolist())


def make_split(dataset: Dataset, protocol: Protocol | None = None) -> Split:
    p = protocol or Protocol()
    b = dataset.behaviors
    cutoff = resolve_cutoff(dataset, p)
    targets = [t for t in p.target_behaviors if t in set(b["behavior"].unique().to_list())]
    if not targets:  # e.g. a dataset with ratings only: every type counts
        targets = sorted(b["behavior"].unique().to_list())
    end = cutoff + timedelta(days=p.window_days)
    train = b.filter(pl.col("ts") < cutoff)
    tb = train.filter(pl.col("behavior").is_in(targets))
    test = b.filter((pl.col("ts") >= cutoff) & (pl.col("ts") < end) & pl.col("behavior").is_in(targets))
    counts = tb.group_by("user_id").len()
    eligible = set(counts.filter(pl.col("len") >= p.min_train_events)["user_id"].to_list())
    users = sorted(eligible & set(test["user_id"].unique().to_list()))
    if p.max_users is not None:
        users = seeded_sample(users, p.max_users, p.seed)
    if not users:
        raise DataError(f"no user has >= {p.min_train_events} events before {cutoff:%Y-%m-%d} and one in the "
                        f"{p.window_days}-day window after it")
    uset = set(users)
    per = (tb.filter(pl.col("user_id").is_in(list(uset)))
           .group_by("user_id", "item_id").agg(pl.len().alias("n"), pl.col("ts").max().alias("last")))
    train_counts: dict[str, dict[str, int]] = {u: {} for u in users}
    last_seen: dict[str, dict[str, datetime]] = {u: {} for u in users}
    for u, i, n, last in per.iter_rows():
        train_counts[u][i] = n
        last_seen[u][i] = last
    relevant: dict[str, dict[str, set[str]]] = {}
    test_items = test.filter(pl.col("user_id").is_in(list(uset))).group_by("user_id").agg(pl.col("item_id").unique())
    for u, items in test_items.iter_rows():
        s = set(items)
        rep = {i for i in s if i in train_counts[u]}
        relevant[u] = {"all": s, "repeat": rep, "explore": s - rep}
    pop_df = tb.group_by("item_id").len()
    item_pop = dict(zip(pop_df["item_id"].to_list(), pop_df["len"].to_list(), strict=True))
    catalogue = dataset.items["item_id"].to_list()
    n_head = int(round(p.head_share * len(catalogue)))
    ranked = sorted(catalogue, key=lambda i: (-item_pop.get(i, 0), i))
    head = set(ranked[:n_head])
    category_of = dict(zip(catalogue, dataset.items["category"].fill_null("").to_list(), strict=True))
    n_test = sum(len(r["all"]) for r in relevant.values())
    n_rep = sum(len(r["repeat"]) for r in relevant.values())
    stats = {"n_users": len(users), "n_train_rows": train.height, "n_test_items": n_test,
             "repeat_share": round(n_rep / n_test, 4) if n_test else 0.0,
             "users_with_repeat": sum(1 for r in relevant.values() if r["repeat"]),
             "users_with_explore": sum(1 for r in relevant.values() if r["explore"]),
             "catalogue_size": len(catalogue), "head_items": n_head, "target_behaviors": targets}
    return Split(protocol=p, cutoff=cutoff, end=end, train=train, users=users, relevant=relevant,
                 train_counts=train_counts, last_seen=last_seen, item_pop=item_pop, head=head,
                 category_of=category_of, catalogue=catalogue, stats=stats)
