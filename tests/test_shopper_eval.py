"""``eval shopper``: a batch written straight into a run log (runs with chosen emitted items) on real
completejourney data, scored through the CLI; the figures are checked against targets, lists and
metrics computed here by hand."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from types import SimpleNamespace

import polars as pl
import pytest
from rich.console import Console

from evals.shopper_eval import LABELS, METHODS, METRIC_NAMES, render, user_figures
from tests.test_runlog_support import NOW, dataset, run_cli

T = datetime(2017, 10, 1)
END = T + timedelta(days=28)
MODELS = {"planner": "scripted", "expert": "scripted", "arbiter": "scripted", "explainer": "scripted",
          "judge": "scripted"}


def _purchases(user: str) -> tuple[pl.DataFrame, set[str]]:
    """The user's purchase rows before T, and the distinct items bought in [T, T + 28 days)."""
    b = dataset().behaviors.filter((pl.col("user_id") == user) & (pl.col("behavior") == "purchase"))
    window = b.filter((pl.col("ts") >= T) & (pl.col("ts") < END))
    return b.filter(pl.col("ts") < T), set(window["item_id"].to_list())


def _targets(user: str) -> dict[str, set[str]]:
    before, window = _purchases(user)
    seen = set(before["item_id"].to_list())
    return {"all": window, "repeat": window & seen, "explore": window - seen}


def _top_frequency(user: str) -> list[str]:
    before, _ = _purchases(user)
    g = before.group_by("item_id").agg(pl.len().alias("n"), pl.col("ts").max().alias("last"))
    return [i for i, _, _ in sorted(g.iter_rows(), key=lambda r: (-r[1], -r[2].timestamp(), r[0]))]


def _ndcg(ranked: list[str], relevant: set[str]) -> float:
    dcg = sum(1 / math.log2(i + 2) for i, x in enumerate(ranked) if x in relevant)
    return dcg / sum(1 / math.log2(i + 2) for i in range(min(len(relevant), len(ranked))))


def _write_batch(path, done: dict[str, list[str]], *, failed=(), pending=(), in_output=(), **spec_overrides) -> str:
    """A batch whose ``done`` users each have a finished run emitting those items, in that order: as
    the recorder writes them (``recommendations`` rows), or for ``in_output`` users in the run output."""
    from batch.runner import BatchSpec
    from runlog.batches import BatchStore
    from runlog.store import RunLog

    store = RunLog(path)
    bs = BatchStore(store)
    spec = BatchSpec(now=NOW, index_cutoff=NOW, seed=42, **spec_overrides)
    bid = bs.create([*done, *failed, *pending], spec=spec.model_dump())
    for u, items in done.items():
        claim = bs.claim(bid, u)
        store.start_run(run_id=claim.run_id, user_id=u, context={"models": MODELS})
        recs = [{"item_id": i, "title": f"item {i}"} for i in items]
        output = {"status": "ok" if items else "empty"}
        if u in in_output:
            output["recommendations"] = recs
        else:
            store.set_recommendations(claim.run_id, recs)
        store.finish_run(claim.run_id, status="ok", output=output)
        bs.complete(claim, "ok")
    for u in failed:
        bs.fail(bs.claim(bid, u), "scripted failure")
    store.close()
    return bid


def _json(out: str) -> dict:
    return json.loads(out[0 if out.startswith("{") else out.index("\n{") + 1:])


def test_user_figures_at_k_zero_and_hand_computed():
    rel = {"all": {"a", "b", "c"}, "repeat": {"a"}, "explore": {"b", "c"}}
    f = user_figures(["x", "b", "a"], rel, 3)
    assert f["recall/all"] == pytest.approx(2 / 3) and f["recall/repeat"] == 1.0 and f["recall/explore"] == 0.5
    assert f["ndcg/all"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3) + 0.5))
    assert f["ndcg/repeat"] == pytest.approx(0.5) and f["hit/explore"] == 1.0
    zero = user_figures([], {"all": {"a"}, "repeat": set(), "explore": {"a"}}, 0)
    assert zero == {"recall/all": 0.0, "recall/repeat": None, "recall/explore": 0.0, "ndcg/all": 0.0,
                    "ndcg/repeat": None, "ndcg/explore": 0.0, "hit/all": 0.0, "hit/repeat": None, "hit/explore": 0.0}


def test_eval_shopper_on_a_written_batch(tmp_path, monkeypatch, capsys):
    from evals.baselines import tifu_knn

    cj = dataset()
    rel_1200 = _targets("1200")
    rep, exp = sorted(rel_1200["repeat"]), sorted(rel_1200["explore"])
    # users 1, 6 and 7 get three items none of them ever bought, so the baselines win on them
    junk_users = ["1", "6", "7"]
    bought = set(cj.behaviors.filter(pl.col("user_id").is_in(["1200", *junk_users]))["item_id"].to_list())
    never = [i for i in sorted(cj.items["item_id"].to_list()) if i not in bought][:3]
    before = cj.behaviors.filter((pl.col("ts") < T) & (pl.col("behavior") == "purchase"))
    few = before.group_by("user_id").len().filter(pl.col("len") < 20).sort("user_id")["user_id"][0]
    emitted = {"1200": [rep[0], exp[0], never[0], rep[1], exp[0]],  # the repeated item counts once: K = 4
               "1193": _top_frequency("1193")[:2], "1213": [], few: never[:1], **dict.fromkeys(junk_users, never)}
    path = tmp_path / "runs.sqlite"
    bid = _write_batch(path, emitted, failed=["no-such-user"], pending=["2468"], in_output=["1193"])

    out_file = tmp_path / "shopper.json"
    code, out, err = run_cli(["eval", "shopper", "--runlog", str(path), "--json", "--out", str(out_file)],
                             monkeypatch, capsys)
    assert code == 0, err
    r = _json(out)
    assert json.loads(out_file.read_text()) == r
    p = r["protocol"]
    assert p["batch_id"] == bid and p["cutoff"].startswith(NOW) and p["window_days"] == 28 and p["models"] == MODELS
    users = ["1", "1193", "1200", "1213", "6", "7"]
    assert p["n_users"] == 6 and r["users"]["evaluated"] == users and r["users"]["empty"] == ["1213"]
    assert r["users"]["excluded"] == {"failed": ["no-such-user"], "not_finished": ["2468"], "not_eligible": [few]}

    per = r["per_user"]
    assert {u: per[u]["k"] for u in per} == {"1200": 4, "1193": 2, "1213": 0, "1": 3, "6": 3, "7": 3}
    assert per["1200"]["intentrec"]["items"] == [rep[0], exp[0], never[0], rep[1]]
    # the baselines: the project's TIFU-KNN (default parameters) and top-frequency, cut to each user's K
    train = cj.behaviors.filter(pl.col("ts") < T)
    longer = tifu_knn(SimpleNamespace(train=train, catalogue=cj.items["item_id"].to_list(), users=users), 10)
    for u, rec in per.items():
        assert rec["tifu_knn"]["items"] == longer[u][:rec["k"]] and len(rec["tifu_knn"]["items"]) == rec["k"]
        assert rec["top_frequency"]["items"] == _top_frequency(u)[:rec["k"]]

    # IntentRec on 1200, by hand: 3 hits of 43 targets (2 of the 8 repeats, 1 of the 35 explores)
    assert (len(rel_1200["all"]), len(rel_1200["repeat"])) == (43, 8)
    ir = per["1200"]["intentrec"]
    assert ir["recall/all"] == pytest.approx(3 / 43) and ir["recall/repeat"] == pytest.approx(2 / 8)
    assert ir["recall/explore"] == pytest.approx(1 / 35) and ir["hit/all"] == 1.0
    assert ir["ndcg/all"] == pytest.approx(_ndcg(ir["items"], rel_1200["all"]))
    assert ir["ndcg/all"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(5)) /
                                           sum(1 / math.log2(i + 2) for i in range(4)))
    # 1213 got nothing: 0 wherever it has a target, for every method
    assert all(per["1213"][m][f"{f}/all"] == 0.0 for m in METHODS for f in ("recall", "ndcg", "hit"))

    # the table: means over the users, each at its own K, from targets computed here
    recall = {m: {u: {} for u in users} for m in METHODS}
    for m in METHODS:
        for part in ("all", "repeat", "explore"):
            xs = []
            for u in users:
                rel = _targets(u)[part]
                if rel:
                    recall[m][u][part] = len(set(emitted[u] if m == "intentrec" else per[u][m]["items"]) & rel) / len(rel)
                    xs.append(recall[m][u][part])
            assert r["metrics"][m][f"recall@k/{part}"] == round(sum(xs) / len(xs), 4), (m, part)
        assert r["metrics"][m]["mean_k"] == 2.5 and r["metrics"][m]["n_users"] == 6
    assert r["metrics"]["intentrec"]["repeat_share"] == round(4 / 15, 4)  # 2 of 1200's 4, both of 1193's 2
    assert r["metrics"]["top_frequency"]["repeat_share"] == 1.0
    assert r["metrics"]["top_frequency"]["recall@k/explore"] == 0.0

    # paired counts, per user from the hand-computed recalls
    for b in ("tifu_knn", "top_frequency"):
        for part in ("all", "explore"):
            want = {"wins": 0, "losses": 0, "ties": 0}
            for u in users:
                if part in recall["intentrec"][u]:
                    a, c = recall["intentrec"][u][part], recall[b][u][part]
                    want["wins" if a > c else "losses" if a < c else "ties"] += 1
            assert r["paired"][b][part] == want, (b, part)
    assert r["paired"]["top_frequency"]["all"]["losses"] == 3  # the three users given never-bought items
    # every figure on which IntentRec is below a baseline is a note with both numbers (there are some)
    ir_row = r["metrics"]["intentrec"]
    assert ir_row["recall@k/all"] < r["metrics"]["top_frequency"]["recall@k/all"]
    for b in ("tifu_knn", "top_frequency"):
        for key, a in ir_row.items():
            c = r["metrics"][b].get(key)
            if "@k/" in key and a is not None and c is not None and a < c:
                name, part = key.split("@k/")
                assert any(f"IntentRec loses to {LABELS[b]} on {METRIC_NAMES[name]}@K_u/{part}: {a:.4f} vs {c:.4f}"
                           in n for n in r["notes"]), key
    assert any("1 of 6 users got no item" in n for n in r["notes"])

    console = Console(record=True, width=220, color_system=None)
    render(r, console)
    text = console.export_text()
    assert "TIFU-KNN" in text and "personal top-frequency" in text and "Recall explore" in text
    assert "paired Recall@K_u/explore" in text and "IntentRec loses to" in text and "model scripted" in text


def test_eval_shopper_errors(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nowhere.sqlite"
    code, _, err = run_cli(["eval", "shopper", "--runlog", str(missing)], monkeypatch, capsys)
    assert code == 2 and "no run log at" in err and "nowhere.sqlite" in err and not missing.exists()

    path = tmp_path / "runs.sqlite"
    bid = _write_batch(path, {}, failed=["1200"])
    code, _, err = run_cli(["eval", "shopper", "--runlog", str(path), "--batch", "nope"], monkeypatch, capsys)
    assert code == 2 and "unknown batch id 'nope'" in err
    code, _, err = run_cli(["eval", "shopper", "--runlog", str(path), "--batch", bid], monkeypatch, capsys)
    assert code == 2 and f"batch {bid} has no finished run" in err

    tags = _write_batch(path, {"1200": []}, overrides={"tags_only": True})
    code, _, err = run_cli(["eval", "shopper", "--runlog", str(path), "--batch", tags], monkeypatch, capsys)
    assert code == 2 and "stopped after the tag judge" in err
    code, _, err = run_cli(["eval", "shopper", "--runlog", str(path), "--batch", bid, "--cutoff", "2017-09-01"],
                           monkeypatch, capsys)
    assert code == 2 and "differs from batch" in err


def test_eval_shopper_on_a_scripted_full_graph_batch(tmp_path):
    """The graph itself (scripted models, a fake retriever over 40 items, 3 items per user) writes the
    batch; K is what its ``emit`` recorded."""
    from batch.runner import BatchSpec, execute
    from evals.shopper_eval import run_shopper_eval
    from runlog.batches import BatchStore
    from runlog.store import RunLog

    store = RunLog(tmp_path / "runs.sqlite")
    spec = BatchSpec(now=NOW, index_cutoff=NOW, factory="tests.test_runlog_support:factory", seed=42)
    bid = BatchStore(store).create(["1200"], spec=spec.model_dump())
    execute(store, bid)
    run_id = BatchStore(store).items(bid)[0]["run_id"]
    shown = [r["item_id"] for r in store.recommendations(run_id)]
    assert len(shown) == 3
    r = run_shopper_eval(runlog=store)
    rec = r["per_user"]["1200"]
    assert rec["k"] == 3 and rec["intentrec"]["items"] == shown
    assert len(rec["tifu_knn"]["items"]) == 3 and rec["top_frequency"]["items"] == _top_frequency("1200")[:3]
    rel = _targets("1200")["all"]
    assert rec["intentrec"]["recall/all"] == len(set(shown) & rel) / len(rel)
    assert r["protocol"]["batch_id"] == bid and r["metrics"]["intentrec"]["mean_k"] == 3.0
