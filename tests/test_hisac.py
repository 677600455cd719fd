"""HiSAC interest agents: semantic IDs, hierarchical voting, soft vs hard routing, quota search."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retrieval.errors import CorruptIndexError
from retrieval.hisac import (
    SIDECAR_FILE,
    TENSORS_FILE,
    Agent,
    SemanticIds,
    activate,
    agent_quotas,
    agent_vectors,
    all_agents,
    search_agents,
)
from retrieval.index import l2_normalise


def test_semantic_ids_unique_round_trip_and_integrity(tmp_path):
    base = np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32)
    vecs = l2_normalise(np.vstack([base, base[:6], base[:2]]))  # 32..37 copy 0..5, 38..39 copy 0..1
    sids = SemanticIds.build(vecs, levels=(4, 3), seed=42)
    assert sids.levels == (4, 3) and sids.codes.shape == (40, 3)
    full = [sids.sid_of(c) for c in range(40)]
    assert len(set(full)) == 40
    assert all(sids.item_of(s) == c for c, s in enumerate(full))
    # copies share every level code and differ only in the dedup digit, numbered in item-code order
    assert full[0][:-1] == full[32][:-1] == full[38][:-1]
    assert full[0][-1] < full[32][-1] < full[38][-1]
    with pytest.raises(KeyError):
        sids.item_of((9, 9, 9))
    with pytest.raises(KeyError):
        sids.sid_of(40)

    sids.save(tmp_path)
    meta = json.loads((tmp_path / SIDECAR_FILE).read_text())
    assert meta["levels"] == [4, 3] and meta["seed"] == 42 and meta["n_items"] == 40
    loaded = SemanticIds.load(tmp_path)
    np.testing.assert_array_equal(loaded.codes, sids.codes)
    for a, b in zip(loaded.codebooks, sids.codebooks, strict=True):
        np.testing.assert_array_equal(a, b)
    assert [loaded.sid_of(c) for c in range(40)] == full

    raw = bytearray((tmp_path / TENSORS_FILE).read_bytes())
    raw[-1] ^= 0xFF
    (tmp_path / TENSORS_FILE).write_bytes(bytes(raw))
    with pytest.raises(CorruptIndexError, match="SHA-256"):
        SemanticIds.load(tmp_path)
    (tmp_path / TENSORS_FILE).unlink()
    with pytest.raises(CorruptIndexError, match="missing"):
        SemanticIds.load(tmp_path)


def test_build_caps_levels_for_a_tiny_catalogue():
    vecs = l2_normalise(np.random.default_rng(1).normal(size=(20, 6)).astype(np.float32))
    sids = SemanticIds.build(vecs)  # default (32, 8): capped at floor(sqrt(20)) = 4
    assert sids.levels == (4, 4) and sids.requested_levels == (32, 8)
    assert len({sids.sid_of(c) for c in range(20)}) == 20


# Hand-made codes: parents A=0, B=1, C=2; items 5 and 7 share cell (C, 0).
PREFIX = np.array([[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [2, 0], [2, 1], [2, 0]])
HIST_CODES = np.arange(8)
HIST_W = np.array([5, 3, 0.2, 2, 1, 4, 0.5, 1], dtype=np.float32)  # A 8.2, B 3, C 5.5; total 16.7


@pytest.fixture()
def hand_sids():
    books = [np.eye(3, dtype=np.float32), np.zeros((3, 3), dtype=np.float32)]
    return SemanticIds.from_prefix_codes(books, PREFIX)


def test_voting_picks_the_right_parents_and_children(hand_sids):
    agents = activate(HIST_CODES, HIST_W, hand_sids)
    # A and C win; in A children 0 and 1 (child 2 holds 2% of A); in C children 0 and 1 (9% of C)
    assert [a.key for a in agents] == [(0, 0), (2, 0), (0, 1), (2, 1)]
    assert [a.votes for a in agents] == pytest.approx([5, 5, 3, 0.5])
    assert agents[0].share == pytest.approx(5 / 16.7)
    assert agents[1].members == (5, 7)
    assert [a.key for a in activate(HIST_CODES, HIST_W, hand_sids, max_agents=3)] == [(0, 0), (2, 0), (0, 1)]
    assert [a.key for a in activate(HIST_CODES, HIST_W, hand_sids, min_share=0.1)] == [(0, 0), (2, 0), (0, 1)]
    assert [a.key for a in activate(HIST_CODES, HIST_W, hand_sids, top_children=1)] == [(0, 0), (2, 0)]
    assert [a.key for a in activate(HIST_CODES, HIST_W, hand_sids, top_parents=1)] == [(0, 0), (0, 1)]
    assert [a.key for a in all_agents(HIST_CODES, HIST_W, hand_sids)] == [
        (0, 0), (2, 0), (0, 1), (1, 0), (1, 1), (2, 1), (0, 2)]
    with pytest.raises(ValueError, match="empty history"):
        activate(np.array([], dtype=np.int64), np.array([], dtype=np.float32), hand_sids)


def test_labels_name_cells_by_majority_category(hand_sids):
    cats = ["Cold Cereal", "Cold Cereal", "Milk", "Soda", "", "Chips", "Chips", "Cold Cereal"]
    labels = hand_sids.labels(cats)
    assert labels[(0,)] == "Cold Cereal (67%)" and labels[(1,)] == "Soda (50%)"
    assert labels[(2, 0)] == "Chips (50%)" and labels[(1, 1)] == "(no category)"
    paths = [f"Grocery > {c}" for c in cats]
    assert hand_sids.labels(cats, paths)[(0,)] == "Grocery (100%): Cold Cereal (67%)"


def test_soft_routing_counts_a_non_member_and_hard_routing_does_not():
    books = [np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32), np.zeros((1, 3), dtype=np.float32)]
    sids = SemanticIds.from_prefix_codes(books, np.array([[0, 0], [0, 0], [1, 0]]))
    vecs = np.array([[1, 0, 0], [0.6, 0, 0.8], [0, 1, 0]], dtype=np.float32)
    codes, w = np.array([0, 1, 2]), np.array([1, 1, 2], dtype=np.float32)
    agent = Agent(0, 0, 2.0, 0.5, (0, 1))

    hard = agent_vectors([agent], codes, w, vecs, sids, routing="hard")
    np.testing.assert_allclose(hard[0], np.array([2, 0, 1]) / np.sqrt(5), atol=1e-6)

    soft = agent_vectors([agent], codes, w, vecs, sids, routing="soft", temperature=1.0)
    attn = np.array([np.e, np.exp(0.6), 2.0])  # w_i * exp(cos(q, v_i)), q = (1, 0, 0)
    expected = attn @ vecs
    np.testing.assert_allclose(soft[0], expected / np.linalg.norm(expected), atol=1e-6)
    assert hard[0, 1] == 0 and soft[0, 1] > 0.1  # pulled towards the non-member (0, 1, 0)

    sharp = agent_vectors([agent], codes, w, vecs, sids)  # temperature 0.1: still non-zero, much smaller
    assert 0 < sharp[0, 1] < soft[0, 1] / 100
    with pytest.raises(ValueError, match="no item in this history"):
        agent_vectors([Agent(1, 0, 0, 0, ())], codes[:2], w[:2], vecs, sids, routing="hard")


def test_agent_quotas_largest_remainder_and_minimum_one():
    assert agent_quotas([0.5, 0.3, 0.2], 10) == [5, 3, 2]
    assert agent_quotas([0.6, 0.25, 0.15], 4) == [2, 1, 1]  # 2.4 / 1.0 / 0.6: the 0.6 remainder wins
    assert agent_quotas([0.9, 0.05, 0.05], 10) == [8, 1, 1]  # 9 / 1 / 0 rounded, then minimum one
    assert agent_quotas([0.7, 0.2, 0.1], 2) == [1, 1, 0]  # fewer slots than agents


def test_search_agents_quotas_exclusion_dedup_and_fill():
    lists = {0: list(range(10, 40)), 1: [10] + list(range(20, 49)), 2: [30]}
    base = {0: 0.9, 1: 0.8, 2: 0.7}
    asked = []

    def fake_search(queries, n):
        asked.append(n)
        ids = np.full((len(queries), n), -1, dtype=np.int64)
        scores = np.full((len(queries), n), -np.inf, dtype=np.float32)
        for row, q in enumerate(queries):
            a = int(np.argmax(q))
            got = lists[a][:n]
            ids[row, : len(got)] = got
            scores[row, : len(got)] = base[a] - 0.01 * np.arange(len(got))
        return scores, ids

    out = search_agents(fake_search, np.eye(3, dtype=np.float32), [0.5, 0.3, 0.2], 10, exclude={11})
    assert asked == [max(5 * 3, 10) + 1]
    codes = [c for c, _, _ in out]
    assert len(codes) == 10 == len(set(codes)) and 11 not in codes
    # quotas 5/3/2; agent 0 takes 10 first, agent 1 skips it; agent 2 has one item, its empty slot goes
    # to the best remaining score (16 from agent 0, 0.84, over 23 from agent 1, 0.76)
    assert {c: a for c, _, a in out} == {10: 0, 12: 0, 13: 0, 14: 0, 15: 0, 16: 0, 20: 1, 21: 1, 22: 1, 30: 2}
    scores = [s for _, s, _ in out]
    assert scores == sorted(scores, reverse=True)


def test_semantic_ids_from_a_category_tree():
    """Levels follow department > category: the level-1 centroid is the department's mean vector, the
    level-2 codebook the category's mean residual, so a cell's centroid is its category's mean."""
    vecs = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0], [5.0, 5.0]], dtype=np.float32)
    dept = ["food", "food", "food", "food", ""]
    cat = ["fruit", "fruit", "bread", "bread", ""]
    sids = SemanticIds.from_tree(vecs, dept, cat)
    assert sids.levels == (2, 3)  # "" is a code of its own at both levels
    assert len({sids.sid_of(i) for i in range(5)}) == 5 and sids.item_of(sids.sid_of(3)) == 3
    l1, l2 = sids.cells(np.arange(5))
    assert l1[0] == l1[2] != l1[4] and l2[0] == l2[1] != l2[2]
    np.testing.assert_allclose(sids.reconstruct(int(l1[0]), int(l2[0])), [2.0, 0.0], atol=1e-6)  # fruit mean
    np.testing.assert_allclose(sids.reconstruct(int(l1[2]), int(l2[2])), [0.0, 3.0], atol=1e-6)  # bread mean
    labels = sids.labels(cat)
    assert labels[(int(l1[0]), int(l2[0]))] == "fruit (100%)"
