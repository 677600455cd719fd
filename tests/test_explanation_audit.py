"""``eval explanations``: the degenerate-text audit over logged runs."""

from __future__ import annotations

from evals.explanation_audit import audit_runs, defects_of, explainer_prompt_texts
from prompts.registry import PromptRegistry
from runlog.store import RunLog
from tests.test_runlog_support import NOW, make_app, run_cli, user_id


def test_each_defect_is_found():
    texts = explainer_prompt_texts(PromptRegistry())
    assert defects_of("Bananas, 40 lb: you have bought it before.", prompt_texts=texts) == []
    assert defects_of("a bread that is Italian, a bread that is Italian, a bread", prompt_texts=texts) \
        == ["repeated_4gram"]
    assert "over_limit" in defects_of(" ".join(f"w{i}" for i in range(60)), prompt_texts=texts)
    assert defects_of("Fresh milk. Buy it now.", prompt_texts=texts) == ["more_than_one_sentence"]
    copied = "this kids cereal makes school-day breakfasts quick"  # the explainer prompt's example
    assert defects_of(copied, prompt_texts=texts) == ["copies_prompt_example"]


def test_audit_counts_shown_explanations_and_judge_pass_rates(tmp_path, monkeypatch, capsys):
    store = RunLog(tmp_path / "r.sqlite")
    out = make_app(store).recommend(user_id(), now=NOW)
    rid = out["run_id"]
    texts = explainer_prompt_texts(PromptRegistry())
    rep = audit_runs(store, [rid], texts)
    assert rep["shown_explanations"] == len(out["recommendations"]) == 3 and rep["degenerate_shown"] == 0
    assert rep["judge"]["explanation"]["judged"] >= 3 and rep["judge"]["tag"]["judged"] == 2
    # a degenerate line that reached the user is counted and quoted
    recs = store.recommendations(rid)
    recs[0] = {**recs[0], "explanation": "a bread that is Italian, a bread that is Italian"}
    store.set_recommendations(rid, recs)
    rep = audit_runs(store, [rid], texts)
    assert rep["degenerate_shown"] == 1 and rep["by_defect"] == {"repeated_4gram": 1}
    assert rep["examples"][0]["item_id"] == recs[0]["item_id"]
    code, stdout, _ = run_cli(["eval", "explanations", "--run", rid[:10], "--runlog", str(store.path)],
                              monkeypatch, capsys)
    assert code == 0 and "1 degenerate" in stdout and "3 shown explanations" in stdout
