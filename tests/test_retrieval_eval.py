"""The retrieval evaluation end to end on a small real slice: every method on one split, the channel
split fitted on the validation window only, discovery channels that never return a bought item."""

from __future__ import annotations

from datetime import datetime

import pytest

from evals.protocol import Protocol
from evals.retrieval_eval import DISCOVERY, run_retrieval_eval
from retrieval.settings import RetrievalSettings

pytestmark = pytest.mark.slow

METHODS = ("popularity", "top_frequency", "tifu_knn", "item_knn", "intentrec_fused", "ablation_no_repeat_channel",
           "ablation_split_repeats_first", "discovery_collab", "hisac", "ablation_hisac_hard",
           "ablation_hisac_kmeans_ids", "ablation_hisac_all_agents")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    # the towers train on every household with >= 1,500 purchase lines before their cutoff, and the
    # protocol evaluates households with as many before T: every evaluated user is in the slice
    settings = RetrievalSettings(max_users=100_000, min_user_events=1500, catalogue="seen", epochs=1,
                                 batch_size=1024, dim=32, hidden=64, id_dim=16, seed=7)
    protocol = Protocol(min_train_events=1500)
    return run_retrieval_eval("completejourney", protocol=protocol, settings=settings, methods=METHODS,
                              progress=False, root=tmp_path_factory.mktemp("retrieval"))


def test_every_method_is_measured_on_the_same_split(report):
    assert set(report["results"]) == set(METHODS)
    assert 60 <= report["split"]["n_users"] <= 87  # 87 households have >= 1,500 lines before T
    for m in METHODS:
        r = report["results"][m]
        assert 0.0 <= r["recall@50/all"] <= 1.0 and r["recall@10/all"] <= r["recall@50/all"] + 1e-12


def test_discovery_channels_never_return_a_bought_item(report):
    for m in DISCOVERY:
        if m in report["results"]:
            assert report["results"][m]["recall@50/repeat"] == 0.0, m
    # TIFU-KNN and the served list do bring repeats back
    assert report["results"]["tifu_knn"]["recall@50/repeat"] > 0.2
    assert report["results"]["intentrec_fused"]["recall@50/repeat"] > 0.2


def test_channel_split_is_fitted_before_the_test_window(report):
    fit = report["details"]["channel_split"]
    test_cutoff = datetime.fromisoformat(report["protocol"]["cutoff_used"])
    assert datetime.fromisoformat(fit["validation_end"]) <= test_cutoff
    assert fit["channels"]["repeat"]["positives"] > 0 and fit["channels"]["discovery"]["rows"] > 0
    assert report["details"]["channel_split_source"] == "fitted in this run on the validation split"
    assert report["details"]["tifu"]["params"]["groups"] >= 1


def test_checks_and_notes_carry_the_numbers(report):
    checks = report["checks"]
    assert {"fused_recall@50_>=_tifu_knn", "fused_ndcg@10_>=_tifu_knn", "fused_explore_recall@50_>=_3x_tifu_knn",
            "best_discovery_explore_recall@50_>=_item_knn"} <= set(checks)
    r = report["results"]
    assert checks["fused_recall@50_>=_tifu_knn"] == (r["intentrec_fused"]["recall@50/all"]
                                                      >= r["tifu_knn"]["recall@50/all"])
    assert any(n.startswith("Paired Recall@50/all, fused vs TIFU-KNN") for n in report["notes"])
    h = report["details"]["hisac"]
    assert 1 <= h["agents_per_user"] <= 4 and h["compression_ratio"] > 1
    assert h["semantic_ids"] == "tree"  # completejourney has department > category


def test_the_cold_build_choice_takes_the_cheapest_training_that_keeps_recall_and_does_not_lose_new_items():
    from evals.retrieval_tuning import cheapest_within, not_worse_on_explore

    def row(name, seconds, all_, more=0, fewer=0):
        return {"build": name, "train_seconds": seconds,
                "fused": {"all": all_, "explore_vs_reference": {"more": more, "fewer": fewer, "same": 1900}}}

    ref, two, one = row("3", 330, 0.2250), row("2", 227, 0.2250, 18, 15), row("1", 110, 0.2251, 28, 21)
    assert cheapest_within([ref, two, one])["build"] == "1"  # 21 losers against 28 winners is no loss
    # 10 users gain and 25 lose new items: one-sided sign test p = 0.008, so one epoch is out
    assert not not_worse_on_explore({"more": 10, "fewer": 25})
    assert not_worse_on_explore({"more": 14, "fewer": 21})  # p = 0.155: chance
    assert not_worse_on_explore({"more": 0, "fewer": 0})
    assert cheapest_within([ref, two, row("1", 110, 0.2251, 10, 25)])["build"] == "2"
    assert cheapest_within([ref, two, row("1", 110, 0.2150, 28, 21)])["build"] == "2"  # below 98% overall
    assert cheapest_within([ref, two, one], tolerance=1.0)["build"] == "1"  # 0.2251 >= 0.2250
    assert cheapest_within([ref, row("big", 440, 0.2248, 5, 40)])["build"] == "3"  # the reference always qualifies
