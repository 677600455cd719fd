"""Judge replay on logged runs (zero generator calls, linked verdict sets, agreement and Cohen's kappa
checked by hand), the labelling file round trip (export, import, agreement) and malformed labels."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest

from judges.agreement import cohen_kappa, compare_verdicts
from prompts.registry import PromptRegistry
from runlog.judge_labels import LabelsError, import_labels
from runlog.judge_replay import replay_runs, select_runs
from runlog.store import RunLog, RunLogError
from tests.graph_fakes import make_model
from tests.test_runlog_support import GENERATOR_SCHEMAS, NOW, items, make_app, run_cli, user_id


def test_kappa_hand_worked():
    # 10 outputs graded by two judges. Observed agreement p_o = 7/10.
    # Shares: a = S 4, A 4, B 2; b = S 4, A 3, B 3 (of 10).
    # Chance agreement p_e = (4*4 + 4*3 + 2*3) / 100 = 34/100.
    # kappa = (0.70 - 0.34) / (1 - 0.34) = 0.36 / 0.66 = 6/11.
    a = ["S", "S", "S", "A", "A", "A", "B", "B", "S", "A"]
    b = ["S", "S", "A", "A", "A", "B", "B", "B", "S", "S"]
    assert cohen_kappa(a, b) == pytest.approx(6 / 11)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    # one judge always S, the other half S half B: p_o = 1/2 = p_e, kappa 0
    assert cohen_kappa(["S"] * 4, ["S", "S", "B", "B"]) == pytest.approx(0.0)
    # complete disagreement on two balanced labels: p_o = 0, p_e = 1/2, kappa = -1
    assert cohen_kappa(["S", "B"], ["B", "S"]) == pytest.approx(-1.0)
    assert cohen_kappa([], []) is None
    assert cohen_kappa(["A", "A"], ["A", "A"]) == 1.0  # both constant and identical (p_e = 1)
    with pytest.raises(ValueError, match="paired"):
        cohen_kappa(["S"], [])


def _judge(bad_title: str, other_explanations: str):
    """Scripted judge: the bad item's explanation is a defect; other explanations get
    ``other_explanations``; tags are good."""
    def rule(messages, schema):
        text = "\n".join(str(m.content) for m in messages)
        is_tag = schema.__name__ == "TagJudgement" or re.search(r"^Tag: ", text, re.M)
        if not is_tag:
            return "defect" if bad_title in text else other_explanations
        return "good"
    return rule


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One run whose judge grades the first item's explanation B twice (regenerated, then dropped).
    Judge passes: 1 = 2 tags (S, S); 2 = 3 explanations (B, S, S); 3 = the regenerated one (B)."""
    path = tmp_path_factory.mktemp("replay") / "runs.sqlite"
    store = RunLog(path)
    bad = items()[0]
    model = make_model(k=2, judge_outcome=_judge(bad["title"], "good"))
    out = make_app(store, model, regen_limit=1).recommend(user_id(), now=NOW)
    return {"path": path, "store": store, "run": out, "bad": bad}


def test_logged_run_is_as_designed(logged):
    store, out = logged["store"], logged["run"]
    js = store.judgements(store.graph_set(out["run_id"])["set_id"])
    assert [(j["pass_no"], j["grade"]) for j in js] == [(1, "S"), (1, "S"), (2, "B"), (2, "S"), (2, "S"), (3, "B")]
    assert js[2]["subject_id"] == js[5]["subject_id"] == f"expl:{logged['bad']['item_id']}"


def test_replay_makes_no_generator_calls_and_links_verdicts(logged):
    store, out = logged["store"], logged["run"]
    model = make_model(k=2, judge_outcome=_judge(logged["bad"]["title"], "ok"))
    report = replay_runs(store, [out["run_id"]], model=model)
    # zero generator calls: only the judge schemas were asked, one joint call per logged request
    assert all(model.calls_for(s) == [] for s in GENERATOR_SCHEMAS)
    assert len(model.calls) == 6 and {c.schema for c in model.calls} == {"TagJudgement", "ExplanationJudgement"}
    (r,) = report.runs
    assert r.requests == 6 and r.model_calls == 6
    original = store.graph_set(out["run_id"])
    replay_set = store.latest_set(out["run_id"], "replay")
    assert replay_set["set_id"] == r.set_id and replay_set["parent_set_id"] == original["set_id"] == r.parent_set_id
    assert replay_set["producer_run_id"] == r.replay_run_id
    replay_run = store.get_run(r.replay_run_id)
    assert replay_run["kind"] == "replay" and replay_run["parent_run_id"] == out["run_id"]
    assert replay_run["status"] == "ok" and len(store.calls(r.replay_run_id)) == 6
    grades = [(j["pass_no"], j["grade"]) for j in store.judgements(r.set_id)]
    assert grades == [(1, "S"), (1, "S"), (2, "B"), (2, "A"), (2, "A"), (3, "B")]
    # Hand-worked: original S S B S S B, replay S S B A A B. p_o = 4/6.
    # Shares: original S 4/6, B 2/6; replay S 2/6, A 2/6, B 2/6.
    # p_e = (4*2 + 0*2 + 2*2) / 36 = 1/3; kappa = (2/3 - 1/3) / (1 - 1/3) = 1/2.
    g = r.agreement["grade"]
    assert g["n"] == 6 and g["agreement"] == pytest.approx(4 / 6, abs=1e-4) and g["kappa"] == pytest.approx(0.5)
    assert g["confusion"] == {"S": {"S": 2, "A": 2}, "B": {"B": 2}}
    # Per dimension: tags all good/good (agreement 1, both constant: kappa 1). Each explanation
    # dimension: defect/defect twice (bad item), good/ok twice: agreement 1/2;
    # p_e = (2*2)/16 = 1/4 (only "defect" is shared), kappa = (1/2 - 1/4) / (3/4) = 1/3.
    dims = r.agreement["dimensions"]
    assert dims["tag.relevance"] == {"n": 2, "agreement": 1.0, "kappa": 1.0}
    for d in ("relevance", "factuality", "attractiveness"):
        assert dims[f"explanation.{d}"]["n"] == 4
        assert dims[f"explanation.{d}"]["agreement"] == pytest.approx(0.5)
        assert dims[f"explanation.{d}"]["kappa"] == pytest.approx(1 / 3, abs=1e-4)
    assert report.agreement["grade"] == r.agreement["grade"]
    assert store.verdict_sets(out["run_id"], source="replay")[-1]["report"]["agreement"]["grade"]["kappa"] == 0.5


def test_replay_with_the_same_judge_agrees_completely(logged):
    model = make_model(k=2, judge_outcome=_judge(logged["bad"]["title"], "good"))
    report = replay_runs(logged["store"], [logged["run"]["run_id"]], model=model, mode="per_dimension")
    # per_dimension mode: 4 calls per tag, 7 per explanation, still no generator call
    assert len(model.calls) == 2 * 4 + 4 * 7 and all(model.calls_for(s) == [] for s in GENERATOR_SCHEMAS)
    assert report.agreement["grade"]["agreement"] == 1.0 and report.agreement["grade"]["kappa"] == 1.0
    dims = report.runs[0].agreement["dimensions"]
    assert dims["tag.specificity"]["agreement"] == 1.0 and dims["explanation.factuality"]["agreement"] == 1.0
    # the per-dimension clarity prompt does not show the item, so this judge passes the bad item's
    # clarity there while the joint call (the graph's) failed every dimension: original
    # defect good good defect vs replay good x4; p_o = 1/2, p_e = (2*4)/16 = 1/2, kappa 0
    assert dims["explanation.clarity"] == {"n": 4, "agreement": 0.5, "kappa": 0.0}


def test_replay_uses_a_swapped_judge_prompt(logged, tmp_path):
    src = PromptRegistry().get("judge_joint").path.read_text(encoding="utf-8")
    (tmp_path / "judge_joint.prompt").write_text(src.replace("<<<system>>>\n", "<<<system>>>\nBE STRICT TODAY.\n", 1))
    model = make_model(k=2, judge_outcome=_judge(logged["bad"]["title"], "good"))
    report = replay_runs(logged["store"], [logged["run"]["run_id"]], model=model,
                         prompts=PromptRegistry([tmp_path]))
    calls = logged["store"].calls(report.runs[0].replay_run_id)
    assert len(calls) == 6 and all("BE STRICT TODAY." in c["messages"][0]["content"] for c in calls)
    assert all(c["prompt_path"] == str(tmp_path / "judge_joint.prompt") for c in calls)
    assert all("BE STRICT TODAY." in c.text for c in model.calls)


def test_replay_cli_json(logged, monkeypatch, capsys):
    from tests.test_runlog_support import BUILT

    BUILT.clear()
    code, out, err = run_cli(["judge", "replay", "--run", logged["run"]["run_id"][:10], "--factory",
                              "tests.test_runlog_support:factory", "--json", "--runlog", str(logged["path"])],
                             monkeypatch, capsys)
    assert code == 0, err
    rep = json.loads(out)
    # the factory's scripted judge says "good" to everything: the two B grades now disagree
    assert rep["runs"][0]["run_id"] == logged["run"]["run_id"] and rep["runs"][0]["model_calls"] == 6
    assert rep["agreement"]["grade"]["confusion"] == {"S": {"S": 4}, "B": {"S": 2}}
    assert all(BUILT[0].models["default"].calls_for(s) == [] for s in GENERATOR_SCHEMAS)
    code, out, err = run_cli(["judge", "replay", "--runlog", str(logged["path"])], monkeypatch, capsys)
    assert code == 2 and "choose exactly one of --run RUN_ID, --since DATE, --all" in err
    code, out, err = run_cli(["judge", "replay", "--run", "zzzz9999", "--runlog", str(logged["path"])],
                             monkeypatch, capsys)
    assert code == 2 and "unknown run id 'zzzz9999'" in err


def test_select_runs(logged):
    store = logged["store"]
    rid = logged["run"]["run_id"]
    assert select_runs(store, run=rid) == [rid]
    assert select_runs(store, all_runs=True) == [rid]  # replays are never selected
    assert select_runs(store, since="2000-01-01") == [rid]
    with pytest.raises(RunLogError, match="no logged runs"):
        select_runs(store, since="2999-01-01")


# ------------------------------------------------------------------------------------------------
# human labels

def _fill(rows: list[dict], bad: str) -> None:
    others = [r for r in rows if r["kind"] == "explanation" and not r["subject_id"].endswith(bad)]
    order = sorted({r["subject_id"] for r in others})
    for r in rows:
        if r["kind"] == "tag":
            r["human_grade"], r["human_relevance"] = "S", "good"
        elif r["subject_id"].endswith(bad):
            r["human_grade"] = "B" if r["pass"] == "2" else "A"
        else:
            r["human_grade"] = "S" if r["subject_id"] == order[0] else "A"
            if r["subject_id"] == order[0]:
                r["human_factuality"] = "defect"


def test_export_import_agreement(logged, tmp_path, monkeypatch, capsys):
    path, bad = str(logged["path"]), logged["bad"]["item_id"]
    out_csv = tmp_path / "labels.csv"
    code, out, err = run_cli(["judge", "export", "--sample", "6", "--out", str(out_csv), "--runlog", path],
                             monkeypatch, capsys)
    assert code == 0 and "wrote 6 outputs" in out
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert len(rows) == 6 and {r["judge_grade"] for r in rows} == {"S", "B"}
    assert all(r["human_grade"] == "" for r in rows) and rows[0]["judge_relevance"] == "good"
    # a smaller sample is a fixed-seed subset
    code, out3, _ = run_cli(["judge", "export", "--sample", "3", "--runlog", path], monkeypatch, capsys)
    code, out3b, _ = run_cli(["judge", "export", "--sample", "3", "--runlog", path], monkeypatch, capsys)
    assert out3 == out3b and len(list(csv.DictReader(io.StringIO(out3)))) == 3
    _fill(rows, bad)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    out_csv.write_text(buf.getvalue())
    code, out, err = run_cli(["judge", "import", str(out_csv), "--labeler", "ana", "--runlog", path],
                             monkeypatch, capsys)
    assert code == 0, err
    assert "imported 9 labels on 6 outputs" in out  # 6 grades + 2 tag relevance + 1 factuality
    code, out, err = run_cli(["judge", "agreement", "--json", "--runlog", path], monkeypatch, capsys)
    rep = json.loads(out)
    # Hand-worked, judge vs person on the grade (tag, tag, bad p2, other1, other2, bad p3):
    # judge S S B S S B; person S S B S A A. p_o = 4/6.
    # Shares: judge S 4, B 2; person S 3, A 2, B 1. p_e = (4*3 + 2*1) / 36 = 7/18.
    # kappa = (12/18 - 7/18) / (11/18) = 5/11.
    assert rep["labels"] == 9 and rep["grade"]["n"] == 6
    assert rep["grade"]["agreement"] == pytest.approx(4 / 6, abs=1e-4)
    assert rep["grade"]["kappa"] == pytest.approx(5 / 11, abs=1e-4)
    assert rep["dimensions"]["tag.relevance"] == {"n": 2, "agreement": 1.0, "kappa": 1.0}
    assert rep["dimensions"]["explanation.factuality"] == {"n": 1, "agreement": 0.0, "kappa": 0.0}
    # JSONL export of the same outputs carries the labels' place-holders
    code, out, _ = run_cli(["judge", "export", "--format", "jsonl", "--runlog", path], monkeypatch, capsys)
    recs = [json.loads(line) for line in out.splitlines()]
    assert len(recs) == 6 and recs[0]["human"]["grade"] is None and "relevance" in recs[0]["human"]["dimensions"]
    # replay reports the judge-vs-human agreement of both the original and the replayed judge
    model = make_model(k=2, judge_outcome=_judge(logged["bad"]["title"], "good"))
    report = replay_runs(logged["store"], [logged["run"]["run_id"]], model=model)
    assert report.human["original"]["grade"]["kappa"] == pytest.approx(5 / 11, abs=1e-4)
    assert report.human["replay"]["grade"]["n"] == 6


def _header() -> str:
    from runlog.judge_labels import _csv_columns

    return ",".join(_csv_columns())


@pytest.mark.parametrize("kind", ["bad_grade", "bad_outcome", "wrong_kind_dimension", "unknown_subject",
                                  "unknown_run", "bad_pass", "extra_field"])
def test_malformed_csv_labels_name_the_line(logged, tmp_path, kind):
    store, rid = logged["store"], logged["run"]["run_id"]
    js = store.judgements(store.graph_set(rid)["set_id"])
    tag = next(j for j in js if j["kind"] == "tag")
    cols = _header().split(",")

    def row(**kw):
        base = dict.fromkeys(cols, "")
        base.update(run_id=rid, **{"pass": str(tag["pass_no"])}, subject_id=tag["subject_id"], kind="tag")
        base.update(kw)
        return ",".join(base[c] for c in cols)

    good = row(human_grade="S")
    bad, problem = {
        "bad_grade": (row(human_grade="X"), "human_grade 'X' is not one of S, A, B"),
        "bad_outcome": (row(human_relevance="great"), "human_relevance 'great' is not one of good, ok, defect"),
        "wrong_kind_dimension": (row(human_factuality="good"), "'factuality' is not a tag dimension (relevance, consistency, specificity, validity)"),
        "unknown_subject": (row(subject_id="tag:nope"), f"run {rid} has no judged subject 'tag:nope' in pass 1"),
        "unknown_run": (row(run_id="ffff0000"), "unknown run id 'ffff0000'"),
        "bad_pass": (row(**{"pass": "two"}), "pass must be a whole number, not 'two'"),
        "extra_field": (good + ",surplus", "1 more field(s) than the header has"),
    }[kind]
    f = tmp_path / "labels.csv"
    f.write_text("\n".join([_header(), good, row(human_grade="A", labeler="bo"), bad]) + "\n")
    before = store.labels([rid])
    with pytest.raises(LabelsError) as e:
        import_labels(store, f)
    assert str(e.value) == f"{f}:4: {problem}" and e.value.line == 4
    assert store.labels([rid]) == before  # nothing stored from a bad file


def test_malformed_jsonl_and_cli_error(logged, tmp_path, monkeypatch, capsys):
    store, rid = logged["store"], logged["run"]["run_id"]
    before = store.labels([rid])
    f = tmp_path / "labels.jsonl"
    js = store.judgements(store.graph_set(rid)["set_id"])
    ok = json.dumps({"run_id": rid, "pass": js[0]["pass_no"], "subject_id": js[0]["subject_id"],
                     "human": {"grade": "A", "dimensions": {}}})
    f.write_text(ok + "\n" + '{"run_id": "' + rid + '", "pass": 1,\n')
    with pytest.raises(LabelsError, match=r"labels\.jsonl:2: not valid JSON"):
        import_labels(store, f)
    code, out, err = run_cli(["judge", "import", str(f), "--runlog", str(logged["path"])], monkeypatch, capsys)
    assert code == 2 and f"{f}:2: not valid JSON" in err
    assert store.labels([rid]) == before  # nothing stored from a bad file
    f.write_text("subject_id,human_grade\nx,S\n")
    code, out, err = run_cli(["judge", "import", str(f), "--format", "csv", "--runlog", str(logged["path"])],
                             monkeypatch, capsys)
    assert code == 2 and ":1: missing column(s) ['run_id', 'pass']" in err


def test_compare_verdicts_pairs_dimensions_by_kind():
    a = {"grade": "S", "kind": "tag", "dimensions": [{"dimension": "relevance", "outcome": "good"}]}
    b = {"grade": "B", "kind": "tag", "dimensions": [{"dimension": "relevance", "outcome": "defect"},
                                                     {"dimension": "validity", "outcome": "defect"}]}
    rep = compare_verdicts([(a, b)])
    assert rep["grade"] == {"n": 1, "agreement": 0.0, "kappa": 0.0, "confusion": {"S": {"B": 1}}}
    assert rep["dimensions"] == {"tag.relevance": {"n": 1, "agreement": 0.0, "kappa": 0.0}}
