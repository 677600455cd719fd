"""The semantic judge profile: embedding evaluators (real MiniLM) and the informativeness rule."""

from __future__ import annotations

import pytest

from judges.evaluate import judge_one, plan
from judges.rules import explanation_informativeness
from judges.schemas import ItemFacts, JudgeRequest
from judges.semantic import SemanticJudge
from llm.scripted import ScriptedChatModel

MILK = ItemFacts(item_id="1029743", title="Fluid Milk White Only, 1 gal", category="Fluid Milk Products")


@pytest.fixture(scope="module")
def judge():
    from retrieval.text_encoder import TextEncoder

    return SemanticJudge(TextEncoder(), ["frozen pizza", "fluid milk white only", "potato chips", "Fluid Milk Products"])


def expl(text: str) -> JudgeRequest:
    return JudgeRequest(subject_id="expl:1", kind="explanation", text=text, intent="family cook: weekly staples",
                        item=MILK, environment="Date: 2017-10-01 (Sunday). Season: autumn.")


def test_grounded_explanation_passes_and_off_topic_fails(judge):
    good = judge.evaluate(expl("Your household buys fluid milk every week, and this gallon of white milk keeps the fridge stocked."))
    bad = judge.evaluate(expl("You often pick up cold cereal, and this kids cereal makes school-day breakfasts easy."))
    junk = judge.evaluate(expl("This is a JSON object that contains a list of items that are recommended."))
    assert good["relevance"].outcome == "good" and good["relevance"].source == "semantic"
    assert bad["relevance"].outcome == "defect" and junk["relevance"].outcome == "defect"


def test_tag_validity_uses_the_catalogue(judge):
    ok = judge.evaluate(JudgeRequest(subject_id="tag:a", kind="tag", text="frozen pizza", intent="quick dinners"))
    junk = judge.evaluate(JudgeRequest(subject_id="tag:b", kind="tag", text="mike ia", intent="quick dinners"))
    assert ok["validity"].outcome == "good" and "frozen pizza" in ok["validity"].reason
    assert junk["validity"].outcome == "defect"


def test_semantic_profile_makes_no_llm_call_and_fills_every_dimension(judge):
    model = ScriptedChatModel(default="{}")
    req = expl("Your household buys fluid milk every week, and this gallon of white milk keeps the fridge stocked.")
    rules, pending = plan(req, semantic=judge, profile="semantic")
    assert pending == () and len(rules) == 7
    v, calls = judge_one(req, model=model, profile="semantic", semantic=judge)
    assert v.grade == "A" and calls == [] and model.calls == []  # 1 good of 7 < 0.75 → A, not S
    with pytest.raises(ValueError, match="unknown judge profile"):
        plan(req, profile="nope")


def test_informativeness_rule_rejects_a_restated_title():
    assert explanation_informativeness(expl("Fluid Milk White Only, 1 gal")).outcome == "defect"
    assert explanation_informativeness(expl("Fluid milk white only, a weekly staple you buy.")) is None


def test_thresholds_separate_the_labelled_set(judge):
    """The calibration set: each labelled pair scored with the real MiniLM encoder through the judge."""
    import json
    from pathlib import Path

    from judges.schemas import ItemFacts, JudgeRequest
    from judges.semantic import EXPLANATION_GROUNDING, TAG_RELEVANCE

    rows = [json.loads(line) for line in (Path(__file__).parent / "data" / "semantic_labels.jsonl").open()]
    agree = {"tag": [], "explanation": []}
    old_ok_passes_bad = 0
    for r in rows:
        if r["kind"] == "tag":
            req = JudgeRequest(subject_id="t", kind="tag", text=r["text"], intent=r["intent"])
            v = judge.evaluate(req)["relevance"]
            score = float(v.reason.rsplit(" ", 1)[1])
            old_ok_passes_bad += r["label"] == "fail" and score >= 0.10
        else:
            item = ItemFacts(item_id="x", title=r["title"], category=r["category"], category_path=[], attributes={})
            v = judge.evaluate(JudgeRequest(subject_id="e", kind="explanation", text=r["text"], item=item))["relevance"]
        agree[r["kind"]].append((v.outcome != "defect") == (r["label"] == "pass"))
    assert len(agree["tag"]) == 24 and len(agree["explanation"]) == 15
    assert all(agree["explanation"]), agree
    assert sum(agree["tag"]) >= 23, agree  # one hard case: "charcoal briquettes" for snacks scores 0.26
    assert old_ok_passes_bad >= 8  # the old ok threshold (0.10) passed most of the bad tags
    assert TAG_RELEVANCE.ok > 0.10 and EXPLANATION_GROUNDING.ok >= 0.35


def test_prime_embeds_every_subject_in_one_call_with_the_same_verdicts(judge):
    """``prime`` (what the judge subgraph calls before its rules) embeds all the texts of a round in
    one batched call; evaluating afterwards calls the model no more, and every score and outcome is
    the one the per-request calls give."""
    import numpy as np

    from retrieval.text_encoder import TextEncoder

    judge.evaluate(JudgeRequest(subject_id="tag:w", kind="tag", text="warm up", intent="x"))  # load the model
    reqs = [JudgeRequest(subject_id=f"tag:{i}", kind="tag", text=t, intent="quick dinners", evidence=e)
            for i, (t, e) in enumerate([("Frozen Pizza", "bought frozen pizza x4"), ("potato chips", ""),
                                        ("mike ia", "bought milk")])]
    reqs += [expl("Your household buys fluid milk every week."), expl("A cereal for school-day breakfasts."),
             JudgeRequest(subject_id="expl:2", kind="explanation", text="Milk for the week.", intent="staples")]

    def fresh():
        enc = TextEncoder()
        enc._model = judge.encoder._model  # the loaded weights, an empty memory cache
        calls = []
        embed = enc._embed
        enc._embed = lambda texts: calls.append(list(texts)) or embed(texts)
        return SemanticJudge(enc, judge.vocabulary), calls

    plain_judge, plain_calls = fresh()
    primed_judge, primed_calls = fresh()
    primed_judge._vocab(), plain_judge._vocab()
    del primed_calls[:], plain_calls[:]
    primed_judge.prime(reqs)
    assert len(primed_calls) == 1 and len(primed_calls[0]) >= len(reqs) + 3
    for r in reqs:
        a, b = plain_judge.evaluate(r), primed_judge.evaluate(r)
        assert a.keys() == b.keys() and [v.outcome for v in a.values()] == [v.outcome for v in b.values()], r.text
    assert len(primed_calls) == 1  # evaluate found every text in the cache
    assert len(plain_calls) > 3  # the unprimed path embeds request by request
    memo_a, memo_b = plain_judge.encoder._memo, primed_judge.encoder._memo
    assert set(memo_a) <= set(memo_b)
    for text, vec in memo_a.items():  # batched and one-by-one embeddings agree
        assert np.allclose(vec, memo_b[text], atol=1e-5), text
