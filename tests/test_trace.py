"""`runs list`, `trace RUN_ID` (tree, --node, --json), time travel (--fork/--edit) and the must-show
prompt swap: a run with an override folder whose explainer template adds a marker sentence has the
marker in its trace's rendered prompt, and the default run does not."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from runlog.store import RunLog, RunLogError
from runlog.trace import build_trace, node_calls, render_tree
from tests.graph_fakes import make_model
from tests.test_runlog_support import BUILT, NOW, items, make_app, run_cli, user_id

MARKER = "Always mention that the moon is made of cheese."


@pytest.fixture(scope="module")
def override_dir(tmp_path_factory):
    from prompts.registry import PromptRegistry

    src = PromptRegistry().get("explainer").path.read_text(encoding="utf-8")
    assert MARKER not in src
    d = tmp_path_factory.mktemp("prompts")
    (d / "explainer.prompt").write_text(src.replace("<<<system>>>\n", f"<<<system>>>\n{MARKER}\n", 1),
                                        encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def logged(tmp_path_factory, override_dir):
    """A default run, a prompt-swapped run, and a run where the judge grades one item B."""
    path = tmp_path_factory.mktemp("trace") / "runs.sqlite"
    store = RunLog(path)
    default = make_app(store).recommend(user_id(), now=NOW)
    swapped = make_app(store).recommend(user_id(), now=NOW, prompts_dir=override_dir)
    bad = items()[0]

    def judge(messages, schema):
        text = "\n".join(str(m.content) for m in messages)
        return "defect" if schema.__name__ == "ExplanationJudgement" and bad["title"] in text else "good"

    graded_b = make_app(store, make_model(k=2, judge_outcome=judge)).recommend(user_id(), now=NOW)
    return {"path": path, "store": store, "default": default, "swapped": swapped, "graded_b": graded_b,
            "bad": bad["item_id"]}


def test_prompt_swap_marker_in_trace_of_swapped_run_only(logged, override_dir, monkeypatch, capsys):
    path = str(logged["path"])
    code, swapped_out, _ = run_cli(["trace", logged["swapped"]["run_id"], "--node", "explain", "--runlog", path],
                                   monkeypatch, capsys)
    assert code == 0 and MARKER in swapped_out
    assert "[raw output]" in swapped_out and "[parsed output]" in swapped_out
    code, default_out, _ = run_cli(["trace", logged["default"]["run_id"], "--node", "explain", "--runlog", path],
                                   monkeypatch, capsys)
    assert code == 0 and MARKER not in default_out and "Style guideline:" in default_out
    # the marker is only in the explainer's stage-2 calls, and each call names its template file and hash
    store = logged["store"]
    calls = store.calls(logged["swapped"]["run_id"], node="explain")
    stage2 = [c for c in calls if c["prompt_name"] == "explainer"]
    assert stage2 and all(MARKER in c["messages"][0]["content"] for c in stage2)
    assert all(c["prompt_path"] == str(override_dir / "explainer.prompt") for c in stage2)
    assert all(MARKER not in c["messages"][0]["content"] for c in calls if c["prompt_name"] == "explainer_style")
    ctx_swapped = store.get_run(logged["swapped"]["run_id"])["context"]["prompts"]["explainer"]
    ctx_default = store.get_run(logged["default"]["run_id"])["context"]["prompts"]["explainer"]
    assert ctx_swapped["sha256"] != ctx_default["sha256"] and ctx_swapped["path"].startswith(str(override_dir))
    assert store.get_run(logged["swapped"]["run_id"])["request"]["overrides"] == {"prompts_dir": str(override_dir)}


def test_runs_list_filters(logged, monkeypatch, capsys):
    path = str(logged["path"])
    code, out, _ = run_cli(["runs", "list", "--json", "--runlog", path], monkeypatch, capsys)
    rows = json.loads(out)
    ids = {logged[k]["run_id"] for k in ("default", "swapped", "graded_b")}
    assert code == 0 and {r["run_id"] for r in rows} >= ids
    row = next(r for r in rows if r["run_id"] == logged["default"]["run_id"])
    assert row["status"] == "ok" and row["calls"] == 13 and row["recommendations"] == 3 and row["tokens"] > 0
    code, out, _ = run_cli(["runs", "list", "--json", "--user", "no-such-user", "--runlog", path], monkeypatch, capsys)
    assert json.loads(out) == []
    code, out, _ = run_cli(["runs", "list", "--json", "--status", "error", "--runlog", path], monkeypatch, capsys)
    assert json.loads(out) == []
    code, out, _ = run_cli(["runs", "list", "--user", user_id(), "--runlog", path], monkeypatch, capsys)
    assert code == 0 and logged["default"]["run_id"][:8] in out and "recommend" in out


def test_trace_tree_shows_nodes_subgraph_tokens_and_b_grades(logged, monkeypatch, capsys):
    rid = logged["graded_b"]["run_id"]
    code, out, _ = run_cli(["trace", rid, "--runlog", str(logged["path"])], monkeypatch, capsys)
    assert code == 0
    for node in ("prepare", "planner", "expert", "arbiter", "judge_tags (subgraph)", "rule_evaluators",
                 "joint_evaluator", "senior_reviewer", "retrieve", "explain", "judge_explanations (subgraph)", "emit"):
        assert node in out
    assert f"B expl:{logged['bad']}" in out
    assert "verdicts: 2 S, 1 B" in out  # first explanation pass
    planner_line = next(ln for ln in out.splitlines() if "planner" in ln and "call" in ln)
    assert "1 call" in planner_line and "tok" in planner_line and "1 attempt" in planner_line
    # B is drawn in bold red
    trace = build_trace(logged["store"], rid)
    console = Console(width=200, color_system="truecolor", force_terminal=True)
    segs = list(console.render(render_tree(trace)))
    b = [s for s in segs if s.text == "B" and s.style is not None]
    assert b and all(s.style.color.name == "red" and s.style.bold for s in b)


def test_trace_json_is_the_whole_trace(logged, monkeypatch, capsys):
    rid = logged["default"]["run_id"]
    code, out, _ = run_cli(["trace", rid[:12], "--json", "--runlog", str(logged["path"])], monkeypatch, capsys)
    trace = json.loads(out)
    assert trace["run"]["run_id"] == rid and trace["stats"]["calls"] == 13
    assert [n["node"] for n in trace["tree"]][:3] == ["prepare", "planner", "expert"]
    judge = next(n for n in trace["tree"] if n["node"] == "judge_explanations")
    assert [c["node"] for c in judge["children"]] == ["rule_evaluators"] + ["joint_evaluator"] * 3 + ["senior_reviewer"]
    assert judge["calls"] == 3 and judge["tokens"] == sum(c["tokens"] for c in judge["children"])
    assert all(c["messages"] for c in trace["calls"])
    assert trace["verdict_sets"][0]["source"] == "graph" and len(trace["verdict_sets"][0]["judgements"]) == 5
    assert len(trace["recommendations"]) == 3


def test_node_calls_for_a_subgraph_node_and_errors(logged):
    trace = build_trace(logged["store"], logged["default"]["run_id"])
    inside = node_calls(trace, "judge_tags")
    assert [c["node"] for c in inside] == ["joint_evaluator"] * 2
    assert {c["subject"] for c in inside} == {f"tag:{t['tag']}" for t in logged["default"]["tags"]}
    assert len(node_calls(trace, "explain", subject=logged["default"]["recommendations"][0]["item_id"])) == 1
    assert len(node_calls(trace, "style")) == 1
    with pytest.raises(RunLogError, match="no node 'explainer'"):
        node_calls(trace, "explainer")


def test_unknown_run_id_is_a_clear_error(logged, monkeypatch, capsys):
    code, out, err = run_cli(["trace", "deadbeef", "--runlog", str(logged["path"])], monkeypatch, capsys)
    assert code == 2 and "error: unknown run id 'deadbeef'" in err and "runs list" in err
    code, out, err = run_cli(["trace", logged["default"]["run_id"], "--node", "nope", "--runlog",
                              str(logged["path"])], monkeypatch, capsys)
    assert code == 2 and "no node 'nope'" in err


def test_fork_with_a_different_tag_list(logged, monkeypatch, capsys):
    """`trace RUN --fork retrieve --edit '{"tags": [...]}'`: retrieval runs again with the new tags,
    the rest of the graph follows, and a new run is recorded, linked to the original."""
    store, original = logged["store"], logged["default"]
    new_tags = [{"tag": "spicy salsa dip", "persona": "Family Cook", "intent": "game night", "reason": "chips",
                 "evidence": "tortilla chips", "grade": "A"}]
    BUILT.clear()
    code, out, err = run_cli(["trace", original["run_id"], "--fork", "retrieve", "--edit",
                              json.dumps({"tags": new_tags}), "--factory", "tests.test_runlog_support:factory",
                              "--json", "--runlog", str(logged["path"])], monkeypatch, capsys)
    assert code == 0, err
    res = json.loads(out)
    (app,) = BUILT
    assert app.retriever.calls[-1]["tags"] == ["spicy salsa dip"]
    gen = [c.schema for c in app.models["default"].calls]
    assert "PlannerOutput" not in gen and "ExpertOutput" not in gen and "ArbiterOutput" not in gen
    assert gen.count("Explanation") == 3
    assert {r["tag"] for r in res["recommendations"]} == {"spicy salsa dip"}
    fork = store.get_run(res["run_id"])
    assert fork["kind"] == "fork" and fork["parent_run_id"] == original["run_id"] and fork["status"] == "ok"
    assert fork["fork"]["node"] == "retrieve" and fork["fork"]["edit"] == {"tags": new_tags}
    assert fork["thread_id"] == store.get_run(original["run_id"])["thread_id"]
    assert [t["node"] for t in store.tasks(fork["run_id"]) if t["parent_task_id"] is None][0] == "retrieve"
    assert {r["tag"] for r in store.recommendations(original["run_id"])} != {"spicy salsa dip"}  # untouched
    trace = build_trace(store, original["run_id"])
    assert {"run_id": fork["run_id"], "kind": "fork", "status": "ok"}.items() <= trace["children"][0].items()


def test_fork_from_python_rebuilds_the_fan_out(logged):
    store = logged["store"]
    model = make_model(k=2)
    rec = make_app(store, model)
    out = rec.fork(logged["default"]["run_id"], node="expert",
                   edit={"personas": [{"name": "Baker", "focus": "home baking", "evidence": "flour, sugar"}]})
    assert model.calls_for("PlannerOutput") == [] and len(model.calls_for("ExpertOutput")) == 1
    assert out["fork"]["method"] == "update_state" and out["fork"]["as_node"] == "planner"
    assert all(t["tag"].startswith("baker ") for t in out["tags"])
    assert store.get_run(out["run_id"])["parent_run_id"] == logged["default"]["run_id"]


def test_fork_errors(logged, monkeypatch, capsys):
    rec = make_app(logged["store"])
    rid = logged["default"]["run_id"]
    with pytest.raises(RunLogError, match="not a node of the graph"):
        rec.fork(rid, node="ranker", edit={})
    with pytest.raises(RunLogError, match="unknown state key"):
        rec.fork(rid, node="retrieve", edit={"tagz": []})
    with pytest.raises(RunLogError, match="unknown run id"):
        rec.fork("0000ffff", node="retrieve", edit={})
    # records, not strings: the error names the key, the position and the field
    with pytest.raises(RunLogError, match=r"tags\[1\] must be an object with a non-empty 'tag'"):
        rec.fork(rid, node="retrieve", edit={"tags": [{"tag": "organic milk"}, "whole wheat bread"]})
    with pytest.raises(RunLogError, match="'personas' must be a list of objects, not str"):
        rec.fork(rid, node="retrieve", edit={"personas": "baker"})
    code, _, err = run_cli(["trace", rid, "--fork", "retrieve", "--edit", "{tags: oops}", "--runlog",
                            str(logged["path"])], monkeypatch, capsys)
    assert code == 2 and "--edit is not valid JSON" in err
    code, _, err = run_cli(["trace", rid, "--edit", "{}", "--runlog", str(logged["path"])], monkeypatch, capsys)
    assert code == 2 and "--edit needs --fork" in err
