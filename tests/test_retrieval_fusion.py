"""Fusion maths: catalogue z-scores, β-weighting, slot planning, quota merge, tag cleaning."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.errors import EmptyTagsError
from retrieval.service import catalogue_moments, clean_tags, fuse, plan_slots, quota_merge, zscores


def test_zscores_equal_brute_force_standardisation():
    rng = np.random.default_rng(1)
    items = rng.normal(size=(500, 8))
    q = rng.normal(size=(3, 8))
    mu, cov = catalogue_moments(items)
    raw = items @ q.T  # (500, 3)
    z = zscores(raw, q, mu, cov)
    brute = (raw - raw.mean(axis=0)) / raw.std(axis=0, ddof=1)
    np.testing.assert_allclose(z, brute, rtol=1e-9, atol=1e-9)


def test_zscores_hand_example():
    # items on a line: x = 0, 1, 2 (dim 1). mean 1, sample variance 1. query q = 2: raw 0, 2, 4 -> z -1, 0, 1
    items = np.array([[0.0], [1.0], [2.0]])
    mu, cov = catalogue_moments(items)
    assert mu.tolist() == [1.0] and cov.tolist() == [[1.0]]
    z = zscores(np.array([[0.0], [2.0], [4.0]]), np.array([[2.0]]), mu, cov)
    np.testing.assert_allclose(z[:, 0], [-1.0, 0.0, 1.0])


def test_fuse_weights_and_missing_channel():
    zu, zt = np.array([1.0, -1.0]), np.array([0.0, 2.0])
    np.testing.assert_allclose(fuse(zu, zt, 0.6), [0.6, -0.6 + 0.8])
    np.testing.assert_allclose(fuse(zu, zt, 1.0), zu)
    np.testing.assert_allclose(fuse(zu, zt, 0.0), zt)
    np.testing.assert_allclose(fuse(None, zt, 0.6), zt)  # unknown user: tag channel only
    with pytest.raises(ValueError):
        fuse(None, None, 0.5)


@pytest.mark.parametrize(("k", "beta", "n_tags", "quota", "expected"), [
    (50, 0.6, 10, None, (20, 2)),
    (10, 0.6, 3, None, (4, 2)),
    (10, 1.0, 3, None, (0, 0)),
    (10, 0.0, 3, None, (10, 4)),
    (10, 0.6, 3, 5, (4, 4)),    # explicit quota, capped at the tag slots
    (10, 0.6, 2, 1, (4, 1)),    # quota 1 x 2 tags cannot fill 4 slots: the rest goes to fused order
    (10, 1.0, 2, 3, (0, 0)),    # β=1: the tag channel has no weight, so no quota either
    (10, 0.6, 0, None, (0, 0)),
])
def test_plan_slots(k, beta, n_tags, quota, expected):
    assert plan_slots(k, beta, n_tags, quota) == expected


def test_quota_merge_union_with_per_channel_quotas():
    fused = np.array([9.0, 8.0, 7.0, 6.0, 1.0, 0.5, 0.4])
    z_user = np.array([1.0, 4.0, 3.0, 2.0, 0.0, 0.0, 0.0])
    # user channel found 0-3; tag A found 4, 5; tag B found 6 and 0
    # k=4 with 2 tag slots (quota 1): user takes its top 2 by its own score (1, 2); A adds 4; B's best
    # by fused is 0 -> final order by fused
    picked = quota_merge(fused, [[4, 5], [6, 0]], k=4, tag_slots=2, quota=1, user_list=[0, 1, 2, 3], user_scores=z_user)
    assert picked == [0, 1, 2, 4]
    # B's best item already taken by the user channel -> B falls back to its next item (6)
    picked = quota_merge(fused, [[4, 5], [6, 0]], k=4, tag_slots=2, quota=1, user_list=[0, 1, 2, 3],
                         user_scores=np.array([4.0, 3.0, 0.0, 0.0, 0, 0, 0]))
    assert picked == [0, 1, 4, 6]
    # no tag slots: the user channel alone, in its own order of preference, shown by fused score
    assert quota_merge(fused, [[4, 5]], k=3, tag_slots=0, quota=0, user_list=[0, 1, 2, 3], user_scores=z_user) == [1, 2, 3]
    # "sum" merge: plain top-k of the fused score
    assert quota_merge(fused, [], k=4, tag_slots=0, quota=0) == [0, 1, 2, 3]
    # quotas of 2 with 3 tag slots and no user channel: A gets 4, 5; B gets 0; 1 slot left -> best fused (1)
    assert quota_merge(fused, [[4, 5], [6, 0]], k=4, tag_slots=3, quota=2) == [0, 1, 4, 5]


def test_quota_merge_respects_exclusions_and_short_pools():
    fused = np.array([3.0, 2.0, 1.0])
    allowed = np.array([False, True, True])
    assert quota_merge(fused, [[0, 1]], k=5, tag_slots=1, quota=1, allowed=allowed) == [1, 2]


def test_clean_tags():
    tags, flags = clean_tags(["  organic  baby food", "Organic baby food", "", "low-sugar cereal"])
    assert tags == ["organic baby food", "low-sugar cereal"]
    assert flags == ["dropped_blank_tags:1", "merged_duplicate_tags"]
    for bad in ([], ["  "], None):
        with pytest.raises(EmptyTagsError):
            clean_tags(bad)
