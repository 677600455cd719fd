"""``bench system``: the attribution and aggregation on hand-made run-log rows, the scripted throughput
section on a tiny setting, the ``--batch`` path on a real (scripted) batch, and the report's keys.
No timing threshold of the real model is tested here."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

import evals.bench_system as bs
from evals.bench_fixtures import SliceRetriever, agent_model
from runlog.store import RunLog

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
TINY = {"n_personas": 1, "n_tags": 1, "n_items": 1}


def at(s: float) -> str:
    return (T0 + timedelta(seconds=s)).isoformat()


def task(node: str, a: float, b: float, ns: str = "") -> dict:
    return {"namespace": ns, "node": node, "started_at": at(a), "wall_s": b - a}


def call(a: float, b: float) -> dict:
    return {"ts": at(b), "latency_s": b - a}


def hand_run(wall: float = 10.0, expert_end: float = 8.0) -> tuple[dict, list[dict], list[dict]]:
    """A 10 s run: prepare, planner, two experts in parallel (the second call waited on the model
    lock, so its latency overlaps the first), retrieval, the judge's rules, one explanation."""
    run = {"run_id": "r", "user_id": "u", "status": "ok", "started_at": at(0), "ended_at": at(wall), "wall_s": wall}
    tasks = [task("prepare", 0, 0.5), task("planner", 0.5, 3.5), task("expert", 3.5, 6.5),
             task("expert", 3.5, expert_end), task("arbiter", 8.0, 8.05), task("retrieve", 8.1, 8.2),
             task("judge_explanations", 8.2, 8.3), task("rule_evaluators", 8.2, 8.3, ns="judge_explanations:abc"),
             task("explain", 8.3, 9.8), task("emit", 9.9, 9.95)]
    calls = [call(0.6, 3.4), call(3.6, 6.4), call(3.6, 7.9), call(8.4, 9.7)]
    return run, tasks, calls


def test_run_profile_unions_overlapping_calls_and_tools():
    p = bs.run_profile(*hand_run())
    assert p["llm_sum_s"] == pytest.approx(2.8 + 2.8 + 4.3 + 1.3)  # what a naive sum would say
    assert p["llm_s"] == pytest.approx(2.8 + 4.3 + 1.3)  # the union: the overlap counted once
    assert p["prepare_s"] == pytest.approx(0.5)
    assert p["retrieval_s"] == pytest.approx(0.1)
    assert p["judge_rules_s"] == pytest.approx(0.1)
    assert p["orchestration_s"] == pytest.approx(10 - (8.4 + 0.5 + 0.1 + 0.1))
    assert p["orchestration_share"] == pytest.approx(0.09)
    ex = p["nodes"]["expert"]
    assert ex["tasks"] == 2 and ex["span_s"] == pytest.approx(4.5) and ex["sum_s"] == pytest.approx(7.5)
    assert "judge_explanations/rule_evaluators" in p["subnodes"]
    assert "rule_evaluators" not in p["nodes"]  # subgraph tasks are not top-level nodes


def test_summarize_runs_median_p95_and_missing_nodes():
    profiles = [bs.run_profile(*hand_run(wall=w, expert_end=e)) for w, e in ((10, 8.0), (12, 7.0), (20, 6.6))]
    del profiles[2]["nodes"]["arbiter"]  # a run that never reached a node counts 0 there
    s = bs.summarize_runs(profiles)
    assert s["runs"] == 3 and s["statuses"] == {"ok": 3}
    assert s["wall"]["median"] == 12 and s["wall"]["p95"] == pytest.approx(19.2)  # linear interpolation
    assert s["nodes"]["expert"]["span"]["median"] == pytest.approx(3.5)
    assert s["nodes"]["arbiter"]["runs_with_node"] == 2 and s["nodes"]["arbiter"]["span"]["min"] == 0
    assert list(s["nodes"])[:3] == ["prepare", "planner", "expert"]  # graph order
    assert s["orchestration_share"]["n"] == 3
    ms = bs.summarize_runs(profiles, unit="ms")
    assert ms["wall"]["median"] == 12000


def test_union_length_and_percentile():
    assert bs.union_length([(0, 2), (1, 3), (5, 6)]) == 4
    assert bs.union_length([(0, 2), (1, 3)], lo=1.5, hi=2.5) == 1
    assert bs.percentile([1, 2, 3, 4, 5], 50) == 3 and bs.percentile([], 95) is None


def test_throughput_table_speedup_and_efficiency():
    t = bs.throughput_table({1: {"users_per_min": 10.0}, 2: {"users_per_min": 19.0}, 4: {"users_per_min": 30.0}})
    assert t["levels"] == [1, 2, 4]
    assert t["by_concurrency"]["2"]["speedup"] == 1.9 and t["by_concurrency"]["4"]["efficiency"] == 0.75


def test_level_users_warm_up_apart_and_paired_or_distinct():
    pool = [str(i) for i in range(10)]
    warm, levels = bs.level_users(pool[:4], [1, 3], paired=True)
    assert warm == "0" and levels == [["1"], ["1", "2", "3"]]  # the same users, the warm-up never timed
    warm, levels = bs.level_users(pool[:5], [1, 3], paired=False)
    assert warm == "0" and levels == [["1"], ["2", "3", "4"]]


def test_vllm_target_is_users_per_min_at_8_over_1():
    def block(c1: float, c8: float) -> dict:
        return {"sections": {"throughput": {"vllm": bs.throughput_table(
            {1: {"users_per_min": c1}, 2: {"users_per_min": c1 * 1.5}, 8: {"users_per_min": c8}})}}}

    t = bs.targets(block(1.0, 2.6))["vllm_throughput_c8_over_c1"]
    assert t["measured"] == 2.6 and t["pass"] is True and t["per_generated_token"] is None  # no token counts
    t = bs.targets(block(2.0, 4.0))["vllm_throughput_c8_over_c1"]
    assert t["measured"] == 2.0 and t["pass"] is False
    assert bs.targets({"sections": {}})["vllm_throughput_c8_over_c1"] == {"measured": None, "pass": None}


def test_vllm_target_also_reports_the_ratio_per_generated_token():
    levels = {c: {"users_per_min": upm, "failed": 0,
                  "runs": {"failed_calls": 0, "unparsed_calls": 0, "completion_tokens_per_user": tok}}
              for c, upm, tok in ((1, 2.0, 400.0), (8, 6.0, 300.0))}
    t = bs.targets({"sections": {"throughput": {"vllm": bs.throughput_table(levels)}}})["vllm_throughput_c8_over_c1"]
    assert t["measured"] == 3.0 and t["per_generated_token"] == 2.25 and t["pass"] is True


def test_vllm_target_fails_when_any_level_had_failed_users_or_invalid_calls():
    def block(**bad: int) -> dict:
        levels = {c: {"users_per_min": upm, "failed": 0, "runs": {"failed_calls": 0, "unparsed_calls": 0}}
                  for c, upm in ((1, 1.0), (8, 3.0))}
        for k, v in bad.items():
            if k == "failed":
                levels[8]["failed"] = v
            else:
                levels[1]["runs"][k] = v
        return {"sections": {"throughput": {"vllm": bs.throughput_table(levels)}}}

    ok = bs.targets(block())["vllm_throughput_c8_over_c1"]
    assert ok["pass"] is True and ok["invalid"] == {"failed_users": 0, "failed_calls": 0, "unparsed_calls": 0}
    for bad in ({"failed": 2}, {"failed_calls": 1}, {"unparsed_calls": 3}):
        t = bs.targets(block(**bad))["vllm_throughput_c8_over_c1"]
        assert t["measured"] == 3.0 and t["pass"] is False and sum(t["invalid"].values()) == next(iter(bad.values()))


def test_per_user_and_tags_part_targets():
    """The tags-only part runs from the run's start to the end of its last tag gate; the per-user
    targets read the latency section's median and p95."""
    run, tasks, calls = hand_run()
    tasks += [task("tag_gate", 8.05, 8.06), task("tag_gate", 3.0, 3.01)]
    p = bs.run_profile(run, tasks, calls)
    assert p["tags_s"] == pytest.approx(8.06)
    s = bs.summarize_runs([p, bs.run_profile(*hand_run(wall=40.0))])
    assert s["tags_part"]["n"] == 1 and s["tags_part"]["median"] == pytest.approx(8.06)
    t = bs.targets({"sections": {"latency": {"summary": s}}})
    assert t["per_user_median_30s_p95_60s_local"]["measured"]["median"] == 25.0
    assert t["per_user_median_30s_p95_60s_local"]["pass"] is True and t["tags_part_median_12s_local"]["pass"] is True
    slow = bs.summarize_runs([bs.run_profile(*hand_run(wall=w)) for w in (31.0, 32.0)])
    assert bs.targets({"sections": {"latency": {"summary": slow}}})["per_user_median_30s_p95_60s_local"]["pass"] is False
    assert bs.targets({"sections": {}})["tags_part_median_12s_local"] == {
        "measured": None, "target": "median <= 12 s (run start to the last tag gate)", "pass": None}


def test_summarize_raw_profile_buckets_by_leafmost_known_frame():
    lines = [
        "<module> (app.py:1);RecordedRun.events (runlog/recorder.py:1);dumps (json/__init__.py:2) 6",
        "<module> (app.py:1);Pregel.stream (pregel/main.py:3);tick (pregel/_runner.py:4) 3",
        "<module> (app.py:1);something (/some/prefix/lib/python3.11/threading.py:5) 1",
    ]
    p = bs.summarize_raw_profile(lines)
    assert p["samples"] == 10
    assert p["buckets"]["run log writes (runlog/: JSON + SQLite)"] == 0.6
    assert p["buckets"]["LangGraph Pregel loop, channels, streaming"] == 0.3
    assert p["subsystems_inclusive"]["run log (runlog/store.py, recorder.py)"] == 0.6
    assert all("/some/prefix" not in f["frame"] for f in p["inclusive_top"])  # no machine paths


@pytest.fixture(scope="module")
def res():
    return bs.Resources(dataset=None, now="2017-10-01", index_cutoff="2017-10-01")


def test_scripted_throughput_scales_with_concurrency(res, tmp_path):
    out = bs.section_throughput_scripted(res, levels=(1, 2, 4), users=4, delay_s=0.2, workdir=tmp_path,
                                         variants=("full",), profile=False, ctx=TINY)
    tab = out["variants"]["full"]
    rows = tab["by_concurrency"]
    assert [rows[c]["done"] for c in ("1", "2", "4")] == [4, 4, 4]
    upm = [rows[c]["users_per_min"] for c in ("1", "2", "4")]
    assert upm[0] < upm[1] < upm[2], upm
    assert rows["4"]["speedup"] > 2, rows
    assert rows["1"]["cpu_s_per_user"] > 0 and tab["gil_bound_ceiling"] > 1


def test_scripted_factory_builds_the_bench_stand_in_for_worker_processes(res, tmp_path, monkeypatch):
    """``batch --factory evals.bench_fixtures:scripted_factory`` runs what the thread variants run:
    the scripted model at the delay the environment names, the slice retriever, recording into the
    worker's run log."""
    from evals.bench_fixtures import DELAY_ENV, scripted_factory

    monkeypatch.setenv(DELAY_ENV, "40")
    store = RunLog(tmp_path / "runs.sqlite")
    rec = scripted_factory(store)
    model = rec.models["default"]
    assert model.model_name == "scripted-agents" and model.latency_s == 0.04
    assert isinstance(rec.retriever, SliceRetriever) and rec.runlog is store
    out = rec.recommend(res.users(1)[0], now=res.now)
    assert out["status"] == "ok" and store.get_run(out["run_id"])["status"] == "ok"
    assert len(model.calls) >= 4 and len(store.calls(out["run_id"])) == len(model.calls)


def test_latency_from_a_finished_batch(res, tmp_path):
    store = RunLog(tmp_path / "runs.sqlite")
    rec = bs.scripted_rec(res.dataset, delay_s=0.0, runlog=store, **TINY)
    users = res.users(3)
    summary = bs._run_batch(store, rec, users, now=res.now, overrides={}, concurrency=1, dataset="completejourney")
    out = bs.section_latency(res, users=1, batch=summary["batch_id"][:8], runlog=str(tmp_path / "runs.sqlite"),
                             workdir=tmp_path)
    assert out["source"]["kind"] == "batch" and out["source"]["done_runs"] == 3
    s = out["summary"]
    assert s["runs"] == 3 and {"planner", "expert", "retrieve", "explain", "emit"} <= set(s["nodes"])
    assert s["llm_calls"]["median"] >= 5  # planner, expert, arbiter, judge, 2 explainer calls, judge
    assert 0 < s["orchestration_share"]["median"] <= 1
    assert len(out["per_run"]) == 3


def _stub(name):
    return lambda *a, **k: {"stub": name}


def test_report_has_every_section_and_target(monkeypatch):
    llm = {"modes": {m: {"tokens_per_s_ratio": 0.99, "wrapper_share": 0.002} for m in ("cold", "warm")}}
    lat = {"summary": {"runs": 2, "orchestration_share": {"median": 0.002, "p95": 0.003},
                       "attribution": {k: {"median": 1.0} for k in ("llm_s", "retrieval_s", "judge_rules_s",
                                                                     "prepare_s", "work_s", "orchestration_s")},
                       "wall": {"median": 100.0}}}
    thr = {"variants": {"full": {"levels": [1, 2], "by_concurrency": {"1": {"speedup": 1.0, "efficiency": 1.0},
                                                                      "2": {"speedup": 1.9, "efficiency": 0.95}}}}}
    monkeypatch.setattr(bs, "section_llm", lambda **k: llm)
    monkeypatch.setattr(bs, "section_latency", lambda *a, **k: lat)
    monkeypatch.setattr(bs, "section_throughput_scripted", lambda *a, **k: thr)
    for name in ("section_prefix", "section_overhead_scripted", "section_retrieval", "section_throughput_server",
                 "section_memory"):
        monkeypatch.setattr(bs, name, _stub(name))
    r = bs.run_system_bench()
    assert set(r) >= {"meta", "gpu", "sections", "targets", "section_timing"}
    assert set(r["sections"]) == {"latency", "overhead", "prefix", "throughput", "retrieval", "memory", "llm"}
    assert set(r["sections"]["throughput"]) == {"scripted", "server"}
    assert set(r["sections"]["overhead"]) == {"local", "scripted_zero_latency"}
    assert r["sections"]["overhead"]["local"]["orchestration_share"]["median"] == 0.002
    t = r["targets"]
    assert t["orchestration_overhead_local_under_5pct"]["pass"] is True
    assert t["structured_call_within_5pct_of_raw_llama_cpp"]["pass"] is True
    assert t["scripted_throughput_near_linear_1_to_8"]["pass"] is True
    assert t["scripted_throughput_x6_1_to_8"]["pass"] is None  # no level 8 in this run
    import torch

    assert r["gpu"]["available"] is (torch.cuda.is_available() or r["gpu"].get("faiss_gpus", 0) > 0)
    assert r["gpu"]["note"].startswith("GPU present" if r["gpu"]["available"] else "no GPU on this machine")
    json.dumps(r)  # JSON-able


def test_the_x6_target_is_judged_on_the_shipped_run_log():
    def tab(one, eight):
        return {"levels": [1, 8], "by_concurrency": {"1": {"users_per_min": one}, "8": {"users_per_min": eight}}}

    got = bs.scripted_x6_target({"full": tab(31.57, 148.01), "off": tab(34.25, 227.43)})
    assert got["measured"] == {"full": 4.688, "off": 6.64} and got["pass"] is False
    assert bs.scripted_x6_target({"full": tab(30.0, 181.0)})["pass"] is True
    assert bs.scripted_x6_target({"off": tab(30.0, 240.0)})["pass"] is None


def test_a_failing_section_keeps_the_others(monkeypatch):
    def boom(**k):
        raise RuntimeError("no model")

    monkeypatch.setattr(bs, "section_llm", boom)
    monkeypatch.setattr(bs, "section_retrieval", _stub("retrieval"))
    r = bs.run_system_bench(sections=["llm", "retrieval"])
    assert r["sections"]["llm"] == {"error": "RuntimeError: no model"}
    assert r["sections"]["retrieval"] == {"stub": "retrieval"}
    assert r["targets"]["structured_call_within_5pct_of_raw_llama_cpp"]["pass"] is None


def test_cli_bench_system_json(monkeypatch, capsys):
    from tests.test_runlog_support import run_cli

    code, out, _ = run_cli(["bench", "system", "--sections", "overhead", "--overhead-users", "1", "--no-profile",
                            "--json"], monkeypatch, capsys)
    assert code == 0, out
    r = json.loads(out)
    z = r["sections"]["overhead"]["scripted_zero_latency"]
    assert z["users"] == 1 and z["runlog_on"]["wall_ms"]["median"] > 0 and z["calls_per_user_median"] >= 10
    assert r["meta"]["command"].startswith("python app.py bench system --sections overhead")


def test_unknown_section_is_refused():
    from core.errors import IntentRecError

    with pytest.raises(IntentRecError, match="unknown section"):
        bs.run_system_bench(sections=["latency", "nope"])


def test_agent_model_answers_catalogue_experts():
    from agents.expert import expert_schema
    from llm.structured import structured_call

    schema = expert_schema(2, ("whole milk", "white bread", "frozen pizza"))
    from langchain_core.messages import HumanMessage

    r = structured_call(agent_model(), schema, [HumanMessage("PERSONA: x")])
    assert len(r.value.tags) == 2 and {t.tag for t in r.value.tags} <= {"whole milk", "white bread", "frozen pizza"}


def test_slice_retriever_is_deterministic(res):
    r = SliceRetriever.from_dataset(res.dataset)
    a, b = r.search("1", ["x"], 3), r.search("1", ["x"], 3)
    assert [c.item_id for c in a.candidates] == [c.item_id for c in b.candidates] and len(a.candidates) == 3


def test_peak_rss_is_the_childs_own(tmp_path):
    import sys

    import numpy as np

    ballast = np.ones(400 * 1024 * 1024 // 8)  # this process holds 400 MiB more than the child will
    r = bs.peak_rss([sys.executable, "-c", "import numpy as np, time; a = np.ones(150 * 1024 * 1024 // 8); "
                     "time.sleep(0.4)"], cwd=tmp_path, timeout_s=60, log=tmp_path / "child.log")
    assert r["exit_code"] == 0 and r["polls"] > 0
    assert 150 <= r["peak_rss_mib"] < 150 + 250, r  # not the parent's high-water mark (ru_maxrss would be)
    assert ballast.sum() > 0
