"""Every metric against a hand-computed example, plus the protocol split and the simple baselines on a
tiny synthetic dataset whose answers can be worked out by hand."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import polars as pl
import pytest

from behavior.schema import BEHAVIOR_SCHEMA, ITEM_SCHEMA, USER_SCHEMA, Dataset
from evals.baselines import item_knn, popularity, top_frequency
from evals.metrics import (
    category_diversity,
    coverage,
    evaluate_lists,
    hit_at_k,
    ndcg_at_k,
    recall_at_k,
    tail_share,
)
from evals.protocol import Protocol, make_split

RANKED = ["a", "b", "c", "d", "e"]
REL = {"b", "d", "x"}


def test_recall_hand_computed():
    # hits in top 2: b -> 1/3; in top 5: b, d -> 2/3
    assert recall_at_k(RANKED, REL, 2) == pytest.approx(1 / 3)
    assert recall_at_k(RANKED, REL, 5) == pytest.approx(2 / 3)
    assert recall_at_k(RANKED, set(), 5) is None


def test_ndcg_hand_computed():
    # hits at ranks 2 and 4: DCG = 1/log2(3) + 1/log2(5); IDCG(3 relevant, K=5) = 1 + 1/log2(3) + 1/2
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 0.5
    assert ndcg_at_k(RANKED, REL, 5) == pytest.approx(dcg / idcg)
    # K=2: DCG = 1/log2(3); IDCG = 1 + 1/log2(3)
    assert ndcg_at_k(RANKED, REL, 2) == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(["b"], {"b"}, 10) == pytest.approx(1.0)
    assert ndcg_at_k(RANKED, set(), 5) is None


def test_hit_rate_hand_computed():
    assert hit_at_k(RANKED, REL, 1) == 0.0
    assert hit_at_k(RANKED, REL, 2) == 1.0
    assert hit_at_k(RANKED, set(), 2) is None


def test_category_diversity_tail_and_coverage():
    cats = {"a": "dairy", "b": "dairy", "c": "bakery", "d": "meat", "e": "meat"}
    assert category_diversity(RANKED, cats, 2) == 1
    assert category_diversity(RANKED, cats, 5) == 3
    head = {"a", "c"}
    assert tail_share(RANKED, head, 4) == pytest.approx(2 / 4)  # b, d are tail
    assert tail_share([], head, 4) is None
    # two users: {a, b} ∪ {b, c} over a catalogue of 10 -> 0.3
    assert coverage([["a", "b", "z"], ["b", "c"]], 10, 2) == pytest.approx(0.3)


def test_evaluate_lists_splits_repeat_and_explore():
    recs = {"u1": ["a", "b", "c"], "u2": ["x", "y", "z"]}
    relevant = {
        "u1": {"all": {"a", "c", "q"}, "repeat": {"a"}, "explore": {"c", "q"}},
        "u2": {"all": {"y"}, "repeat": set(), "explore": {"y"}},
    }
    cats = {"a": "1", "b": "1", "c": "2", "x": "3", "y": "3", "z": "4"}
    m = evaluate_lists(recs, relevant, [2], cats, head={"a", "x"}, catalogue_size=8)
    # u1 top2 {a,b}: all 1/3, repeat 1/1, explore 0/2 ; u2 top2 {x,y}: all 1, explore 1 ; repeat undefined
    assert m["recall@2/all"] == pytest.approx((1 / 3 + 1) / 2)
    assert m["recall@2/repeat"] == pytest.approx(1.0)  # only u1 counts
    assert m["recall@2/explore"] == pytest.approx((0 + 1) / 2)
    assert m["hit@2/all"] == pytest.approx(1.0)
    assert m["hit@2/explore"] == pytest.approx(0.5)
    # u2 NDCG@2: hit at rank 2 -> (1/log2 3) / 1
    assert m["ndcg@2/explore"] == pytest.approx((0 + 1 / math.log2(3)) / 2)
    assert m["diversity@2"] == pytest.approx((1 + 1) / 2)
    assert m["tail@2"] == pytest.approx((0.5 + 0.5) / 2)
    assert m["coverage@2"] == pytest.approx(4 / 8)


# ----- protocol + baselines on a tiny dataset ---------------------------------------------------------

T = datetime(2020, 1, 10)


def _tiny() -> Dataset:
    items = pl.DataFrame({
        "item_id": ["i1", "i2", "i3", "i4", "i5"],
        "title": ["Milk", "Bread", "Eggs", "Jam", "Tea"],
        "category": ["Dairy", "Bakery", "Dairy", "Spreads", "Drinks"],
        "category_path": ["Food > Dairy > Milk", "Food > Bakery > Bread", "Food > Dairy > Eggs",
                          "Food > Spreads > Jam", "Food > Drinks > Tea"],
        "brand": [None] * 5, "price": [None] * 5, "attributes": ["{}"] * 5,
    }, schema=ITEM_SCHEMA)
    rows = []

    def buy(u, i, day):
        rows.append({"user_id": u, "item_id": i, "behavior": "purchase", "ts": T + timedelta(days=day),
                     "query": None, "value": 1.0})

    # before T: u1 buys i1 x3, i2 x1 ; u2 buys i1, i2 (i2 later), i3 ; u3 only one purchase (not eligible)
    for d in (-9, -8, -7):
        buy("u1", "i1", d)
    buy("u1", "i2", -5)
    buy("u2", "i1", -9)
    buy("u2", "i3", -8)
    buy("u2", "i2", -2)
    buy("u3", "i4", -3)
    # test window: u1 buys i1 (repeat) and i3 (explore); u2 buys i4 (explore); u3 buys i1
    buy("u1", "i1", 1)
    buy("u1", "i3", 2)
    buy("u2", "i4", 3)
    buy("u3", "i1", 1)
    # after the window: ignored
    buy("u1", "i5", 40)
    b = pl.DataFrame(rows, schema=BEHAVIOR_SCHEMA)
    users = pl.DataFrame({"user_id": ["u1", "u2", "u3"], "attributes": ["{}"] * 3}, schema=USER_SCHEMA)
    return Dataset(name="tiny", items=items, users=users, behaviors=b)


def test_split_repeat_explore_and_eligibility():
    split = make_split(_tiny(), Protocol(cutoff=T, window_days=28, min_train_events=2))
    assert split.users == ["u1", "u2"]  # u3 has one purchase before T
    assert split.relevant["u1"] == {"all": {"i1", "i3"}, "repeat": {"i1"}, "explore": {"i3"}}
    assert split.relevant["u2"] == {"all": {"i4"}, "repeat": set(), "explore": {"i4"}}
    assert split.item_pop == {"i1": 4, "i2": 2, "i3": 1, "i4": 1}
    assert split.head == {"i1"}  # 20% of 5 items
    assert split.stats["repeat_share"] == pytest.approx(1 / 3, abs=1e-4)


def test_simple_baselines_by_hand():
    split = make_split(_tiny(), Protocol(cutoff=T, window_days=28, min_train_events=2))
    pop = popularity(split, 3)
    assert pop["u1"] == ["i1", "i2", "i3"]  # counts 4, 2, then i3/i4 tie broken by id
    tf = top_frequency(split, 5)
    assert tf["u1"] == ["i1", "i2"]
    assert tf["u2"] == ["i2", "i3", "i1"]  # all once: most recent first (i2 day -2, i3 day -8, i1 day -9)
    knn = item_knn(split, 5)
    # u1 history {i1, i2}; i3 co-occurs with i1 and i2 (via u2); seen items are excluded
    assert knn["u1"] == ["i3"]
    assert "i1" not in knn["u2"] and knn["u2"] == []  # u2's neighbours are all items u2 already bought
