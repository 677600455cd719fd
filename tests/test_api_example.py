"""The README's Python API section is runnable: its python blocks are executed in order, with
``IntentRec.from_settings`` swapped for the scripted model on the real completejourney data and a
run log in a temporary folder (the embedded model and the FAISS index are exercised elsewhere)."""

from __future__ import annotations

import re
from pathlib import Path

from intentrec.service import IntentRec
from prompts.registry import PromptRegistry
from runlog.store import RunLog
from tests.graph_fakes import make_model
from tests.test_runlog_support import GENERATOR_SCHEMAS, make_app

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_api_example_runs(tmp_path, monkeypatch, capsys):
    blocks = python_blocks()
    assert len(blocks) == 3 and "candidate_pool" in blocks[1]
    assert "replay_runs" in blocks[2] and "rec.fork(" in blocks[2]
    store = RunLog(tmp_path / "runs.sqlite")
    model = make_model(k=2)
    built = []

    def from_settings(cls, *args, **kwargs):
        built.append(make_app(store, model, n_personas=2, n_tags=4, n_items=5))
        return built[-1]

    monkeypatch.setattr(IntentRec, "from_settings", classmethod(from_settings))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_prompts").mkdir()
    src = PromptRegistry().get("explainer").path.read_text(encoding="utf-8")
    (tmp_path / "my_prompts" / "explainer.prompt").write_text(src.replace("<<<system>>>\n", "<<<system>>>\nBe brief.\n", 1))

    ns: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), ns)  # the README's own example
    printed = capsys.readouterr().out

    assert len(built) == 2
    # the candidate tools block: statistics before the date, 30 phrases in the tools' own ranking
    assert ns["stats"].now.isoformat() == "2017-10-01T00:00:00"
    assert len(ns["tools_only_ranking"](ns["candidate_pool"](ns["stats"], "1"), n=30)) == 30
    out, fork, report = ns["out"], ns["fork"], ns["report"]
    assert ns["run"]["status"] == "ok" and ns["run"]["context"]["models"]["judge"] == "scripted"
    assert len(out["tags"]) == 4 and out["recommendations"]
    assert fork["fork"]["node"] == "retrieve" and {r["tag"] for r in fork["recommendations"]} == {"spicy salsa dip"}
    assert f"{fork['run_id']} True" in printed
    assert report.runs[0].run_id == out["run_id"] and report.agreement["grade"]["kappa"] == 1.0
    # the per-call prompt folder of the first block reached the explainer
    swapped = [r for r in store.runs(kind="recommend") if r["request"]["overrides"].get("prompts_dir")]
    assert len(swapped) == 1
    assert all("Be brief." in c["messages"][0]["content"]
               for c in store.calls(swapped[0]["run_id"], node="explain") if c["prompt_name"] == "explainer")
    # replaying made judge calls only
    judge_calls = len(store.calls(report.runs[0].replay_run_id))
    assert judge_calls == report.runs[0].model_calls > 0
    assert all(c["prompt_name"].startswith("judge") for c in store.calls(report.runs[0].replay_run_id))
    assert set(GENERATOR_SCHEMAS).isdisjoint(c["record"]["schema"] for c in store.calls(report.runs[0].replay_run_id))
