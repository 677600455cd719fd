"""The constrained reward (learning/reward.py) on hand-made expert answers: accuracy with new categories
weighted, each gate (rules pass share, diversity, length), CRS against the summed ablation, and
invalid answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from learning.reward import RewardConfig, accuracy, parse_tags, score

CATS = {"white bread": "Bakery", "rye bread": "Bakery", "potato chips": "Snacks", "green tea": "Drinks",
        "whole milk": "Dairy", "tomato salsa": "Sauces", "frozen pizza": "Frozen"}
VOCAB = sorted({w for t in CATS for w in t.split()})


def embed(tags: list[str]) -> np.ndarray:
    """Bag of words over the tags' words: 'white bread' and 'rye bread' share half their words."""
    return np.array([[1.0 if w in t.split() else 0.0 for w in VOCAB] for t in tags])


def answer(*tags: str) -> str:
    return json.dumps({"intents": [{"interest": "x", "reason": "y"}], "tags": [{"tag": t, "intent": 0} for t in tags]})


GOOD = answer("white bread", "potato chips", "green tea", "whole milk", "tomato salsa")
KW = {"tag_category": CATS, "targets": {"Bakery", "Drinks", "Frozen"}, "new": {"Drinks", "Frozen"}, "embed": embed}


def test_accuracy_weights_new_categories():
    # targets Bakery (seen, 1) + Drinks and Frozen (new, 2 each) = 5; the tags hit Bakery and Drinks
    assert accuracy(["white bread", "green tea"], CATS, {"Bakery", "Drinks", "Frozen"}, {"Drinks", "Frozen"}, 2.0) \
        == pytest.approx(3 / 5)
    assert accuracy(["white bread", "green tea"], CATS, {"Bakery", "Drinks", "Frozen"}, set(), 2.0) == pytest.approx(2 / 3)
    assert accuracy(["unknown thing"], CATS, {"Bakery"}, set(), 2.0) == 0.0 and accuracy([], CATS, set(), set(), 2) == 0.0


def test_a_good_answer_gets_its_accuracy():
    r = score(GOOD, **KW)
    assert r.gates == {"valid": True, "pass": True, "div": True, "length": True}
    assert r.acc == pytest.approx(3 / 5) and r.crs == r.acc and r.pass_share == 1.0 and r.n_tags == 5
    assert r.div == pytest.approx(1.0)  # no two tags share a word


def test_repeats_fail_the_rules_gate_and_zero_the_constrained_reward():
    """The embedded model's commonest fault: one phrase many times. Accuracy is unchanged, so a summed
    reward still pays for it; CRS does not."""
    rep = answer("white bread", "green tea", "green tea", "green tea", "green tea", "green tea")
    r = score(rep, **KW)
    assert r.acc == pytest.approx(3 / 5) and r.pass_share == pytest.approx(2 / 6)
    assert r.gates["pass"] is False and r.div == pytest.approx(5 / 15) and r.crs == 0.0
    assert r.summed > 0.2  # the summed ablation still rewards it


def test_length_and_diversity_gates():
    short = score(answer("white bread", "green tea"), **KW)
    assert short.gates["length"] is False and short.crs == 0.0 and short.acc == pytest.approx(3 / 5)
    breads = score(answer("white bread", "rye bread", "whole milk", "potato chips", "tomato salsa"), **KW,
                   config=RewardConfig(min_div=0.96))
    assert breads.gates["div"] is False and breads.crs == 0.0  # 'white bread' ~ 'rye bread' pulls R_div to 0.95
    assert score(answer("white bread", "rye bread", "whole milk", "potato chips", "tomato salsa"), **KW).crs > 0


def test_rule_breaking_tags_count_against_the_pass_share():
    r = score(answer("some snacks", "white bread", "potato chips", "green tea", "whole milk"), **KW,
              recent={"whole milk"})
    assert r.pass_share == pytest.approx(3 / 5) and r.gates["pass"] is False and r.crs == 0.0


@pytest.mark.parametrize("text", ["not json", "[]", json.dumps({"tags": "white bread"}),
                                  json.dumps({"tags": [{"label": "white bread"}]})])
def test_invalid_answers_score_zero(text):
    assert parse_tags(text) is None
    r = score(text, **KW)
    assert r.crs == 0.0 and r.summed == 0.0 and r.gates["valid"] is False
