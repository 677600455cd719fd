"""TIFU-KNN and the channel split on hand-computed examples."""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import polars as pl
import pytest

from core.errors import DataError
from retrieval.channel_split import ChannelSplit, Logistic
from retrieval.repeat import (
    BasketHistory,
    RepeatScores,
    TifuParams,
    group_index,
    predict_scores,
    top_k_rows,
    user_features,
    user_vectors,
)

ITEMS = ["x", "y", "z", "w"]
P = TifuParams(groups=2, within_decay=0.5, group_decay=0.5, k=1, alpha=0.5, basket="day")


def _rows(spec: dict[str, list[tuple[int, list[str]]]]) -> pl.DataFrame:
    rows = [{"user_id": u, "item_id": i, "behavior": "purchase", "ts": datetime(2017, 1, d, 10 + n)}
            for u, baskets in spec.items() for d, items in baskets for n, i in enumerate(items)]
    return pl.DataFrame(rows)


BEHAVIORS = _rows({"A": [(1, ["x"]), (2, ["x", "y"]), (3, ["z"])], "B": [(1, ["y"])], "C": [(1, ["w"]), (2, ["w"])]})


def test_grouping_follows_the_official_code():
    g, i, m = group_index(np.full(10, 10), np.arange(10), 3)  # 10 baskets, 3 groups: sizes 3, 3, 4
    assert g.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert i.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 3]
    assert m.tolist() == [3, 3, 3, 3, 3, 3, 4, 4, 4, 4]
    g, i, m = group_index(np.full(2, 2), np.arange(2), 7)  # fewer baskets than groups: one each
    assert g.tolist() == [0, 1] and i.tolist() == [0, 0] and m.tolist() == [1, 1]


def test_tifu_vectors_and_prediction_by_hand():
    h = BasketHistory.from_behaviors(BEHAVIORS, ITEMS, basket="day")
    assert h.user_ids == ["A", "B", "C"] and h.n_baskets.tolist() == [3, 1, 2]
    X = user_vectors(h, P).toarray()
    # A: groups [b0], [b1, b2]; b0 = 1 * 0.5 / 2, b1 = 0.5 / 2 * 1 / 2, b2 = 1 / 2 * 1 / 2
    assert X[0] == pytest.approx([0.25 + 0.125, 0.125, 0.25, 0.0])
    assert X[1] == pytest.approx([0.0, 0.5, 0.0, 0.0])  # one basket, group weight 0.5^(2-1), one group
    assert X[2] == pytest.approx([0.0, 0.0, 0.0, 0.25 + 0.5])
    # A's nearest other user is B (d² 0.34375 against 0.78125 for C): 0.5·v_A + 0.5·v_B lifts y above x
    S = predict_scores(user_vectors(h, P), np.array([0]), P).toarray()[0]
    assert pytest.approx([0.1875, 0.3125, 0.125, 0.0]) == S
    assert top_k_rows(predict_scores(user_vectors(h, P), np.array([0]), P), 3)[0].tolist() == [1, 0, 2]


def test_repeat_scores_only_hold_bought_items_and_features():
    rs = RepeatScores.compute(BEHAVIORS, ITEMS, TifuParams(groups=2, within_decay=0.5, group_decay=0.5, k=1,
                                                           alpha=0.5, basket="day"), as_of_day=17170)
    assert [(ITEMS[c], round(s, 4)) for c, s in rs.ranked("A")] == [("y", 0.3125), ("x", 0.1875), ("z", 0.125)]
    # B's neighbour is A (closer than C), but only B's own item y is a repeat candidate
    assert [ITEMS[c] for c, _ in rs.ranked("B")] == ["y"]
    assert rs.ranked("nobody") == [] and rs.user_features("nobody") is None
    f = rs.user_features("A")
    assert f[0] == pytest.approx(math.log1p(3)) and f[1] == pytest.approx(math.log1p(3))
    assert f[2] == pytest.approx(1 / 3)  # of the 3 lines after the first basket, x is a repeat
    day3 = int(datetime(2017, 1, 3).timestamp() // 86400)
    assert f[4] == pytest.approx(math.log1p(17170 - day3), rel=1e-5)


def test_repeat_scores_cache_round_trip(tmp_path):
    rs = RepeatScores.compute(BEHAVIORS, ITEMS, P, as_of_day=17170)
    rs.save(tmp_path / "repeat.safetensors", "key1")
    back = RepeatScores.load(tmp_path / "repeat.safetensors", "key1")
    assert back.ranked("A") == rs.ranked("A") and back.params == P and back.basket_mode == "day"
    assert RepeatScores.load(tmp_path / "repeat.safetensors", "other") is None  # stale key: recompute
    meta = tmp_path / "repeat.json"  # written by an older version without as_of_day: recompute, no KeyError
    meta.write_text(meta.read_text(encoding="utf-8").replace('"as_of_day"', '"old_field"'), encoding="utf-8")
    assert RepeatScores.load(tmp_path / "repeat.safetensors", "key1") is None


def test_bad_parameters_are_refused():
    h = BasketHistory.from_behaviors(BEHAVIORS, ITEMS, basket="day")
    with pytest.raises(DataError, match="TIFU-KNN parameters"):
        user_vectors(h, TifuParams(within_decay=0.0))


def test_user_features_need_no_purchase_type():
    views = BEHAVIORS.with_columns(pl.lit("view").alias("behavior"))  # no purchases at all: every type counts
    h = BasketHistory.from_behaviors(views, ITEMS, basket="day")
    assert h.n_baskets.tolist() == [3, 1, 2]
    assert user_features(h, user_vectors(h, P), 17170).shape == (3, 5)


# ----- channel split ------------------------------------------------------------------------------------

def test_fallback_split_puts_repeats_first_and_keeps_the_discovery_floor():
    split = ChannelSplit.fallback()
    rep = [(i, 1.0 - i / 100) for i in range(20)]
    disc = [(100 + i, 5.0) for i in range(20)]
    out = split.merge(rep, disc, np.zeros(5), 10)
    assert [c for c, ch, _ in out if ch == "repeat"] == list(range(9))
    assert [c for c, ch, _ in out if ch == "discovery"] == [100]  # 10% of 10 slots
    assert [p for *_, p in out] == sorted((p for *_, p in out), reverse=True)


def test_repeat_model_reranks_with_pair_features():
    # the repeat model prefers a high "since over interval" (due again) over the TIFU rank
    rep_m = Logistic(mean=[0.0] * 4, scale=[1.0] * 4, coef=[0.0, 0.0, 2.0, 0.0], intercept=-1.0)
    disc_m = Logistic(mean=[0.0] * 3, scale=[1.0] * 3, coef=[0.0, 0.0, 0.0], intercept=-5.0)
    split = ChannelSplit(models={"repeat": rep_m, "discovery": disc_m}, min_discovery_share=0.0)
    out = split.merge([(1, 3.0), (2, 2.0), (3, 1.0)], [(9, 1.0)], np.array([0.0]), 2,
                      repeat_pairs=np.array([[0.1], [2.0], [1.0]]))
    assert [c for c, *_ in out] == [2, 3]


def test_fitted_split_follows_the_probabilities_per_user():
    # repeat probability falls fast with rank; discovery is flat and rises with the user's feature 0
    rep_m = Logistic(mean=[0.0] * 3, scale=[1.0] * 3, coef=[-2.0, 0.0, 0.0], intercept=1.0)
    disc_m = Logistic(mean=[0.0] * 3, scale=[1.0] * 3, coef=[0.0, 0.0, 3.0], intercept=-2.0)
    split = ChannelSplit(models={"repeat": rep_m, "discovery": disc_m}, min_discovery_share=0.0)
    rep = [(i, 1.0) for i in range(10)]
    disc = [(100 + i, 1.0) for i in range(10)]
    staples = split.merge(rep, disc, np.array([0.0]), 4)  # discovery p = σ(-2) = 0.12
    explorer = split.merge(rep, disc, np.array([1.0]), 4)  # discovery p = σ(1) = 0.73
    # repeat p: σ(1) = 0.73 at rank 0, σ(1 - 2·log 2) = 0.40, σ(1 - 2·log 3) = 0.23, σ(-1.77) = 0.15
    assert [ch for _, ch, _ in staples] == ["repeat"] * 4
    assert [ch for _, ch, _ in explorer] == ["repeat", "discovery", "discovery", "discovery"]
    # an item in both lists counts once, as a repeat
    both = split.merge([(7, 1.0)], [(7, 1.0), (8, 1.0)], np.array([1.0]), 5)
    assert [(c, ch) for c, ch, _ in both] == [(7, "repeat"), (8, "discovery")]


def test_split_model_file_round_trip_and_errors(tmp_path):
    m = Logistic(mean=[0.0, 1.0], scale=[1.0, 2.0], coef=[0.5, -0.5], intercept=0.1)
    path = ChannelSplit(models={"repeat": m, "discovery": m}, min_discovery_share=0.2).save(tmp_path / "s.json")
    back = ChannelSplit.load(path)
    assert back.models["repeat"] == m and back.min_discovery_share == 0.2
    with pytest.raises(DataError, match="missing"):
        ChannelSplit.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    with pytest.raises(DataError, match="unreadable"):
        ChannelSplit.load(tmp_path / "bad.json")
    with pytest.raises(DataError, match="expects 2 features"):
        m.predict(np.zeros((1, 3)))


def test_pair_features_by_hand():
    day10 = int(datetime(2017, 1, 10).timestamp() // 86400)
    rs = RepeatScores.compute(BEHAVIORS, ITEMS, P, as_of_day=day10)
    codes, scores, pairs = rs.candidates("A")
    assert [ITEMS[c] for c in codes] == ["y", "x", "z"] and list(scores) == sorted(scores, reverse=True)
    assert pairs[:, 0] == pytest.approx([1 / 3, 2 / 3, 1 / 3])  # share of A's 3 baskets
    assert pairs[:, 1] == pytest.approx(np.log1p([8, 8, 7]))  # last bought on the 2nd, 2nd, 3rd
    # x: 8 days over its own 1-day interval; y and z (bought once): over A's mean basket gap of 1 day
    assert pairs[:, 2] == pytest.approx([8, 8, 7])
    assert pairs[:, 3].tolist() == [0, 1, 0]
    assert pairs[:, 4] == pytest.approx([0.0, 1.0, 0.0])  # y: A and B bought it once each; x: A twice
    c_codes, _, c_pairs = rs.candidates("C")
    assert [ITEMS[c] for c in c_codes] == ["w"] and c_pairs[0, 0] == 1.0 and c_pairs[0, 4] == 1.0
    empty = rs.candidates("nobody")
    assert len(empty[0]) == 0 and empty[2].shape == (0, 5)
