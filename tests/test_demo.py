"""`app.py demo` with the scripted model on the real completejourney data: users from the evaluation
protocol, the history brief, the future check against real purchases, and the HTML report."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from html.parser import HTMLParser

import polars as pl

from commands.demo import future_check, history_brief, pick_users, stage_seconds
from tests.test_runlog_support import dataset, run_cli

FACTORY = "tests.test_runlog_support:factory"
T = datetime(2017, 10, 1)


class _Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.chunks: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.chunks.append(data)


def test_pick_users_have_a_past_and_a_future():
    ds = dataset()
    ids = pick_users(ds, T, 4)
    assert len(ids) == 4 and ids == pick_users(ds, T, 4)  # fixed seed
    for u in ids:
        b = ds.behaviors.filter(pl.col("user_id") == u)
        assert b.filter(pl.col("ts") < T).height >= 20
        assert b.filter((pl.col("ts") >= T) & (pl.col("ts") < T + timedelta(days=28))).height >= 1


def test_history_brief_and_future_check_on_real_rows(count_tokens):
    ds = dataset()
    u = pick_users(ds, T, 1)[0]
    brief = history_brief(ds, u, T, count_tokens)
    before = ds.behaviors.filter((pl.col("user_id") == u) & (pl.col("ts") < T))
    assert brief["events"] == before.height
    assert brief["compressed_tokens"] <= brief["raw_tokens"] and brief["top_categories"]
    after = ds.behaviors.filter((pl.col("user_id") == u) & (pl.col("ts") >= T)
                                & (pl.col("ts") < T + timedelta(days=28)))
    bought = after["item_id"][0]
    never = before["item_id"][0] if before["item_id"][0] not in set(after["item_id"]) else None
    recs = [{"item_id": bought}] + ([{"item_id": never}] if never else [])
    fut = future_check(ds, u, T, recs)
    assert fut["items"][bought]["bought_item"] and fut["items"][bought]["bought_category"]
    assert fut["purchases_after"] == after.filter(pl.col("behavior") == "purchase").height
    if never:
        assert not fut["items"][never]["bought_item"] and not fut["items"][never]["new_to_user"]
    assert fut["item_hits"] == 1


def test_demo_command_writes_a_report_with_every_recommendation(tmp_path, monkeypatch, capsys):
    # scripted calls that take 60 ms each, so the stage times have something to show
    monkeypatch.setenv("INTENTREC_TEST_LATENCY_S", "0.06")
    out = tmp_path / "demo.html"
    code, stdout, err = run_cli(["demo", "--users", "2", "--factory", "tests.batch_support:slow_factory", "--runlog", str(tmp_path / "r.sqlite"),
                                 "--out", str(out), "--json"], monkeypatch, capsys)
    assert code == 0, err
    res = json.loads(stdout[stdout.index("{"):] if not stdout.startswith("{") else stdout)
    assert res["demo_date"] == "2017-10-01" and len(res["users"]) == 2
    assert [u["user_id"] for u in res["users"]] == pick_users(dataset(), T, 2)
    ids = set(dataset().items["item_id"].to_list())
    html = out.read_text()
    parser = _Text()
    parser.feed(html)
    text = " ".join(parser.chunks)
    for u in res["users"]:
        assert u["status"] == "ok" and u["run_id"] and len(u["recommendations"]) == 3
        assert u["history"]["events"] > 0
        for r in u["recommendations"]:
            assert r["item_id"] in ids and r["explanation"] and r["grade"] in ("S", "A")
            assert r["item_id"] in u["future"]["items"]
            assert r["title"] in text
        for p in u["personas"]:
            assert p["name"] in text
        # per-stage wall times, so a newcomer sees where the minutes go
        assert {"planner", "expert"} <= set(u["stage_s"]) and list(u["stage_s"].values()) == sorted(
            u["stage_s"].values(), reverse=True)
    assert "script" not in parser.tags
    assert res["report"] == str(out)


def test_stage_seconds_are_slowest_first_and_skip_instant_nodes():
    totals = {"planner": {"wall_s": 16.04}, "expert": {"wall_s": 29.96}, "emit": {"wall_s": 0.001},
              "retrieve": {"wall_s": 0.05}}
    assert stage_seconds(totals) == {"expert": 30.0, "planner": 16.0, "retrieve": 0.1}
    assert stage_seconds({}) == {}
    # fan-out tasks that ran together: the span, not the sum
    assert stage_seconds({"expert": {"wall_s": 75.0, "span_s": 25.04}}) == {"expert": 25.0}
