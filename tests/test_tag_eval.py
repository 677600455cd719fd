"""``eval tags``: hand-computed metrics and targets, the category baselines on real completejourney
data (including the quoted quick-check figures), and the command end to end on scripted batch runs."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from evals.tag_eval import (
    BASELINES,
    METRIC_KEYS,
    NOTE_BASELINES,
    CategoryMapper,
    category_facts,
    distinct_n,
    hit,
    idf_score,
    judge_rates,
    mapping_audit,
    mean_pairwise_distance,
    recent_repeat_share,
    run_tag_eval,
    score_methods,
)
from judges.schemas import EXPLANATION_DIMENSIONS, TAG_DIMENSIONS
from tests.test_runlog_support import NOW, dataset, run_cli

T = datetime(2017, 10, 1)
EXPLANATION = "A handy pick that fits the way this household already shops."  # tests/graph_fakes.py


# ----- hand-computed metrics ----------------------------------------------------------------------

def test_hit_at_k():
    assert hit(["A", "B", "C"], "C", 2) == 0.0
    assert hit(["A", "B", "C"], "C", 3) == 1.0
    assert hit(["A", "B"], {"X", "B"}, 30) == 1.0 and hit(["A"], {"X"}, 30) == 0.0
    assert hit(["A"], None, 30) is None and hit(["A"], set(), 30) is None
    assert hit([], "A", 30) == 0.0


def test_text_diversity_hand_computed():
    # bigrams (a,b) (b,c) (a,b) (b,d): 3 distinct of 4
    assert distinct_n(["a b c", "A, b d"], 2) == 0.75
    assert distinct_n(["one"], 2) is None
    # N=2, df(a)=2, df(b)=df(c)=1: each text's mean IDF is (ln 1 + ln 2)/2, normalised by ln 2
    assert idf_score(["a b", "a c"]) == pytest.approx(0.5)
    # N=3, df(a)=2: texts 1-2 score (ln 1.5 + ln 3)/2, text 3 scores ln 3
    want = ((math.log(1.5) + math.log(3)) / 2 * 2 + math.log(3)) / 3 / math.log(3)
    assert idf_score(["a b", "a c", "d"]) == pytest.approx(want)
    assert idf_score([EXPLANATION] * 4) == 0.0  # the same words everywhere
    assert idf_score(["x"]) is None


def test_r_div_and_recent_repeat_share_hand_computed():
    # cosines 0, 1/√2, 1/√2 -> distances 1, 1-1/√2, 1-1/√2
    got = mean_pairwise_distance(np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]))
    assert got == pytest.approx((3 - math.sqrt(2)) / 3)
    assert mean_pairwise_distance(np.array([[1.0, 0.0]])) is None
    assert mean_pairwise_distance(np.array([[1.0, 0.0], [3.0, 0.0]])) == pytest.approx(0.0)
    # 2 of 4 tag categories were bought recently by their user
    assert recent_repeat_share([(["A", "B", "C"], {"A"}), (["D"], {"D", "E"})]) == 0.5
    assert recent_repeat_share([([], {"A"})]) is None


def test_judge_rates_hand_computed():
    def row(kind, grade, outcomes):
        return {"kind": kind, "grade": grade, "verdict": {"kind": kind, "grade": grade, "dimensions": [
            {"dimension": d, "outcome": o, "fallback": o == "defect" and d == "validity"} for d, o in outcomes]}}

    rows = [row("tag", "S", [("relevance", "good"), ("validity", "good")]),
            row("tag", "B", [("relevance", "ok"), ("validity", "defect")]),
            row("tag", "A", [("relevance", "defect"), ("validity", "good")]),
            row("explanation", "A", [("clarity", "ok")])]
    r = judge_rates(rows)
    assert r["tag"]["n_verdicts"] == 3
    assert r["tag"]["pass"]["relevance"] == 0.6667 and r["tag"]["pass"]["validity"] == 0.6667  # rounded to 4
    assert r["tag"]["pass"]["specificity"] is None  # a dimension no verdict carried
    assert r["tag"]["grades"] == {"S": 0.3333, "A": 0.3333, "B": 0.3333}
    assert r["tag"]["unjudged_dimensions"] == 1
    assert r["explanation"]["pass"]["clarity"] == 1.0 and r["explanation"]["grades"]["A"] == 1.0
    assert set(r["explanation"]["pass"]) == set(EXPLANATION_DIMENSIONS)


def test_mapping_audit_hand_computed():
    per_user = {"u": {"intentrec": {"tags": [{"tag": "Corn  Dogs", "category": "Frozen Meat"},
                                             {"tag": "ant and roach", "category": "Antacids"},
                                             {"tag": "free words", "category": "Bread"}]}},
                "v": {"intentrec": {"tags": []}}}
    lookup = {"corn dogs": {"Frozen Meat", "Frozen Pizza"}, "ant and roach": {"Insecticides"}}
    got = mapping_audit(per_user, lookup, seen={"u": {"Insecticides"}})
    assert got == {"n_tags": 3, "n_catalogue_phrases": 2, "agree": 0.5, "from_user_categories": 0.5}
    assert per_user["u"]["intentrec"]["tags"][1]["catalogue_categories"] == ["Insecticides"]
    assert per_user["u"]["intentrec"]["tags"][2]["catalogue_categories"] is None


# ----- targets on a hand-made dataset -------------------------------------------------------------

def _toy() -> SimpleNamespace:
    items = pl.DataFrame({"item_id": ["i1", "i2", "i3", "i4", "i5"], "category": ["A", "B", "C", "", "D"],
                          "title": ["Apple Pie", "Baked Beans", "Corn Chips", "Dog Food", "Egg Noodles"]})
    d = timedelta(days=1)
    rows = [  # (user, item, ts) in dataset row order
        ("u", "i2", T - 30 * d), ("u", "i2", T - 25 * d), ("u", "i2", T - 24 * d),  # B three times, long ago
        ("u", "i1", T - 20 * d), ("u", "i1", T - 3 * d),                             # A twice, recently
        ("v", "i3", T - 5 * d),
        ("u", "i4", T + d), ("u", "i1", T + d), ("u", "i3", T + d),  # first basket: no category, A, C
        ("u", "i5", T + 2 * d),
        ("v", "i2", T + 28 * d),  # on the window's end: outside
        ("v", "i3", T),           # exactly T: inside
    ]
    beh = pl.DataFrame({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                        "behavior": ["purchase"] * len(rows), "ts": [r[2] for r in rows]})
    return SimpleNamespace(items=items, behaviors=beh)


def test_targets_baselines_and_discovery_on_a_hand_made_dataset():
    f = category_facts(_toy(), ["u", "v"], T, T + timedelta(days=28), recent_days=14)
    assert f.popular == ["B", "A", "C"]  # lines before T: B 3, A 2, C 1
    assert f.frequent["u"] == ["B", "A"] and f.recent["u"] == ["A", "B"]
    assert f.recent_set["u"] == {"A"} and f.seen["u"] == {"A", "B"}
    # the first line after T has no category: the next target is the first categorised line
    assert f.next_cat["u"] == "A" and f.basket["u"] == {"A", "C"}
    assert f.discovery["u"] == "C"  # first category u never bought before T
    assert f.next_cat["v"] == "C" and "v" not in f.discovery  # v only re-buys C; B falls on the end date
    # the tools' lists: u's own types by count; no household shares a category with u, so no kNN
    assert f.tools["u"][:2] == ["baked beans", "apple pie"] and f.knn_new["u"] == []
    assert f.baseline("tools_only", "u") == f.tools["u"]


# ----- baselines on real completejourney data ----------------------------------------------------

@pytest.fixture(scope="module")
def mapper():
    return CategoryMapper(dataset().items["category"].drop_nulls().unique().to_list())


def test_baselines_on_completejourney(mapper):
    from evals.protocol import Protocol, make_split

    ds = dataset()
    split = make_split(ds, Protocol(cutoff=T, max_users=60, seed=7))
    f = category_facts(ds, split.users, split.cutoff, split.end)
    assert len(mapper.categories) == 303
    assert all(c == t and s > 0.999 for t, (c, s) in zip(f.popular, mapper.map(f.popular), strict=True))
    table, per_user = score_methods(split.users, f, mapper, intentrec=None, k=30, match_n=6)
    assert table["frequent"]["discovery_hr@k"] == 0.0 and table["recent"]["discovery_hr@k"] == 0.0
    assert table["frequent"]["n_with_discovery_target"] > 30
    assert table["popular"]["discovery_hr@k"] > 0.0
    assert len({tuple(f.baseline("popular", u)) for u in split.users}) == 1
    assert any(f.baseline("recent", u)[:6] != f.baseline("frequent", u)[:6] for u in split.users)
    assert table["recent"]["recent_repeat_share"] > table["popular"]["recent_repeat_share"]
    for m in BASELINES:
        assert set(METRIC_KEYS) <= set(table[m]) and 0.0 <= table[m]["hr@n"] <= table[m]["hr@k"] <= 1.0


def test_quick_check_figures_are_reproduced(mapper):
    """The issue's quick check (28 days after 2017-10-01): HR@30 0.60 frequent / 0.50 popular,
    discovery 0.0 / 0.155. Reproduced on every user with a purchase before T (--min-events 1)."""
    r = run_tag_eval(None, users=None, min_events=1, baselines_only=True, encoder=mapper.encoder)
    m = r["metrics"]
    assert r["users"]["n_evaluated"] == 2006 and r["users"]["n_with_discovery_target"] == 1763
    assert m["frequent"]["hr@k"] == pytest.approx(0.600, abs=0.005)
    assert m["popular"]["hr@k"] == pytest.approx(0.50, abs=0.005)
    assert m["frequent"]["discovery_hr@k"] == 0.0
    assert m["popular"]["discovery_hr@k"] == pytest.approx(0.155, abs=0.003)
    assert "intentrec" not in m and r["per_user"] is None


# ----- end to end on scripted runs ---------------------------------------------------------------

def _json(out: str) -> dict:
    """The printed JSON report (in process, structlog's default logger shares stdout with it)."""
    return json.loads(out[0 if out.startswith("{") else out.index("\n{") + 1:])


def test_eval_tags_on_a_scripted_batch(tmp_path, monkeypatch, capsys):
    from batch.runner import BatchSpec
    from runlog.batches import BatchStore
    from runlog.store import RunLog

    path = tmp_path / "runs.sqlite"
    store = RunLog(path)
    users = ["1193", "1200", "1213", "no-such-user"]
    spec = BatchSpec(now=NOW, index_cutoff=NOW, factory="tests.test_runlog_support:factory", seed=42)
    bid = BatchStore(store).create(users, spec=spec.model_dump())

    code, out, err = run_cli(["eval", "tags", "--batch", bid, "--runlog", str(path), "--no-resume", "--json"],
                             monkeypatch, capsys)
    assert code == 2 and "no user left to evaluate" in err  # nothing has run yet

    code, out, err = run_cli(["eval", "tags", "--batch", bid, "--runlog", str(path), "--json"], monkeypatch, capsys)
    assert code == 0, err
    r = _json(out)
    assert r["batch"]["batch_id"] == bid and r["batch"]["counts"]["done"] == 3
    assert r["users"]["evaluated"] == ["1193", "1200", "1213"]
    assert r["users"]["excluded"]["failed"] == ["no-such-user"]
    assert r["model"] == {"planner": "scripted", "expert": "scripted", "arbiter": "scripted",
                          "explainer": "scripted", "judge": "scripted"}
    assert r["protocol"]["cutoff"].startswith(NOW) and r["protocol"]["seed"] == 42
    assert set(r["metrics"]) == {"intentrec", *BASELINES}
    for m in r["metrics"].values():
        assert set(METRIC_KEYS) <= set(m)
        assert m["n_users"] == 3 and m["hr@k"] is not None and m["hr@n"] is not None
    ir = r["metrics"]["intentrec"]
    assert ir["n_tags"] == 2.0  # 2 tags per user (make_app: n_tags=2)
    assert ir["distinct_categories"] == 2.0 and ir["r_div"] > 0.0
    tags = r["per_user"]["1213"]["intentrec"]["tags"]
    assert [t["tag"] for t in tags] == ["family organic cereal", "family frozen pizza"]
    assert [t["category"] for t in tags] == ["Cereal/Breakfast", "Frozen Pizza"] and all(t["similarity"] > 0.5 for t in tags)
    assert r["intentrec"]["mapping_audit"]["n_tags"] == 6  # open-vocabulary tags: audited where they are phrases
    # the scripted experts wrote every tag (no refill from the candidate tools): their own figures are the list's
    assert all(t["by_expert"] for u in r["users"]["evaluated"] for t in r["per_user"][u]["intentrec"]["tags"])
    x = r["intentrec"]["expert_tags"]
    assert x["per_user"] == 2.0 and x["hr@k"] == ir["hr@k"] and x["discovery_hr@k"] == ir["discovery_hr@k"]
    # the scripted judge grades everything good; every explanation is the same sentence
    j = r["intentrec"]["judge"]
    assert j["tag"]["pass"] == dict.fromkeys(TAG_DIMENSIONS, 1.0) and j["tag"]["grades"]["S"] == 1.0
    assert j["explanation"]["pass"] == dict.fromkeys(EXPLANATION_DIMENSIONS, 1.0)
    e = r["intentrec"]["explanations"]
    assert e["n"] == 9 and e["idf"] == 0.0 and e["distinct_2"] == pytest.approx(1 / 9, abs=1e-4)
    # every figure on which IntentRec is below a baseline is a note with both numbers
    for b in NOTE_BASELINES:
        for key, label in (("hr@k", "HR@K:"), ("discovery_hr@k", "discovery HR@K:")):
            a, c = ir[key], r["metrics"][b][key]
            if a is not None and c is not None and a < c:
                assert any(n.startswith(f"IntentRec loses to {b} on {label} {a:.3f} vs {c:.3f}") for n in r["notes"])

    code, out, err = run_cli(["eval", "tags", "--batch", bid, "--runlog", str(path)], monkeypatch, capsys)
    assert code == 0, err
    assert "IntentRec tags" in out and "HR@30" in out and "disc HR@30" in out and "judge pass rates" in out


def test_eval_tags_creates_then_reuses_its_batch(tmp_path, monkeypatch, capsys):
    path = tmp_path / "runs.sqlite"
    args = ["eval", "tags", "--users", "3", "--factory", "tests.test_runlog_support:factory", "--runlog", str(path),
            "--json"]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    first = _json(out)
    assert first["users"]["sample"] == ["1204", "2468", "483"] and first["batch"]["sample_matches_seed"] is True
    assert first["batch"]["spec"]["index_cutoff"] == NOW and first["batch"]["spec"]["now"] == NOW
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    again = _json(out)
    assert again["batch"]["batch_id"] == first["batch"]["batch_id"] and again["batch"]["ran_now"] is None
    assert again["metrics"] == first["metrics"]
    code, out, err = run_cli(["eval", "tags", "--batch", first["batch"]["batch_id"], "--runlog", str(path),
                              "--backend", "openai"], monkeypatch, capsys)
    assert code == 2 and "drop --backend" in err


def test_expert_tag_figures_leave_out_the_tools_refill():
    from evals.tag_eval import expert_tag_figures

    def tag(cat, by_expert):
        return {"tag": cat.lower(), "category": cat, "by_expert": by_expert}

    recs = [  # user 1: only the refill hits; user 2: an expert tag hits; user 3: no target
        {"tags": [tag("Milk", True), tag("Bread", False)], "expert_hit": 0.0, "expert_discovery_hit": None},
        {"tags": [tag("Eggs", True), tag("Soup", True), tag("Rice", False)], "expert_hit": 1.0,
         "expert_discovery_hit": 1.0},
        {"tags": [tag("Tea", False)], "expert_hit": None, "expert_discovery_hit": None},
    ]
    x = expert_tag_figures(recs)
    assert x["per_user"] == 1.0  # (1 + 2 + 0) / 3
    assert (x["hr@k"], x["hits"]) == (0.5, 1) and (x["discovery_hr@k"], x["discovery_hits"]) == (1.0, 1)
