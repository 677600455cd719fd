"""One tag rule set for the arbiter and the judge, and one holiday calendar."""

from __future__ import annotations

import re
from datetime import date

import pytest

from agents import tag_rules
from agents.arbiter import apply_rules, normalize, rule_check
from agents.context import Environment, upcoming_holidays
from agents.expert import TAG_PATTERN
from core.calendar import HOLIDAYS, easter, holiday_dates, holidays_between, nth_weekday
from judges.rules import tag_consistency, tag_specificity, tag_validity
from judges.schemas import JudgeRequest


def arbiter(text: str, brands=(), recent=()) -> str | None:
    return rule_check(text, seen=set(), brands=set(tag_rules.brand_keys(brands)), recent=set(tag_rules.keyed(recent)))


def tag(text: str, **kw) -> JudgeRequest:
    return JudgeRequest(subject_id="t", kind="tag", text=text, **kw)


def judge_reason(v) -> str | None:
    return None if v is None else f"{v.dimension}: {v.reason}"


# ----------------------------------------------------------------------------- tags

@pytest.mark.parametrize("text,word", [("some snacks", "some"), ("Various Crackers", "various"),
                                       ("great items", "great"), ("sports goods", "goods")])
def test_a_vague_tag_is_rejected_by_both_for_the_same_word(text, word):
    assert arbiter(text) == "vague"
    assert judge_reason(tag_specificity(tag(text))) == (
        f"specificity: vague word {tag_rules.fold(word)!r}; name the concrete product type")


@pytest.mark.parametrize("text", ["organic baby food", "low-sugar breakfast cereal", "great northern beans",
                                  "Mother's Day chocolates"])
def test_a_good_tag_passes_both(text):
    assert arbiter(text, brands=["Dole"], recent=["whole milk"]) is None
    assert tag_specificity(tag(text)) is None
    assert tag_validity(tag(text, banned_terms=["Dole"])) is None
    assert tag_consistency(tag(text, recent_purchases=["whole milk"])) is None


def test_the_word_limit_is_the_expert_grammars_in_both():
    assert (tag_rules.MIN_TAG_WORDS, tag_rules.MAX_TAG_WORDS) == (2, 4)
    longest = " ".join(["fresh"] * tag_rules.MAX_TAG_WORDS)
    assert re.fullmatch(TAG_PATTERN, longest) and not re.fullmatch(TAG_PATTERN, longest + " fresh")
    assert re.fullmatch(TAG_PATTERN, "fresh fresh") and not re.fullmatch(TAG_PATTERN, "fresh")
    four, five = "organic whole greek yogurt", "organic whole plain greek yogurt"
    assert arbiter(four) is None and tag_specificity(tag(four)) is None
    assert arbiter(five) == "shape"
    assert judge_reason(tag_specificity(tag(five))) == "specificity: 5 words is too long for a tag; use 2-4 words"
    assert arbiter("yogurt") == "shape"
    assert judge_reason(tag_specificity(tag("yogurt"))) == (
        "specificity: a single word is too broad; write 'modifier + core word' (2-4 words)")


def test_markup_brand_and_recent_agree():
    for text in ("**greek** yogurt", "greek | yogurt", "<b>greek yogurt</b>"):
        assert arbiter(text) == "markup"
        assert judge_reason(tag_validity(tag(text))) == "validity: contains markup"
    assert arbiter("deals at www.shop.com") == "markup"
    assert judge_reason(tag_validity(tag("deals at www.shop.com"))) == "validity: contains a URL or e-mail address"
    assert arbiter("Dole pineapple-chunks", brands=["Dole"]) == "brand"
    assert judge_reason(tag_validity(tag("Dole pineapple-chunks", banned_terms=["Dole"]))) == (
        "validity: names the brand 'Dole'; tags must not name brands")
    assert arbiter("Fresh Cherries", recent=["fresh cherry"]) == "recent"
    assert judge_reason(tag_consistency(tag("Fresh Cherries", recent_purchases=["fresh cherry"]))) == (
        "consistency: repeats the recent purchase 'fresh cherry'; suggest something new")


def test_normalize_is_the_arbiters_and_one_key_per_tag():
    assert normalize is tag_rules.normalize
    assert normalize("Low-Sugar Cereals!") == "low-sugar cereal"
    assert normalize("Kellogg’s Mac & Cheese Boxes") == "kellogg mac and cheese box"
    pool = [{"tag": "fresh cherries", "persona": "a"}, {"tag": "Fresh Cherry", "persona": "b"}]
    kept, rejected = apply_rules(pool, brands=set(), recent=set())
    assert [k["tag"] for k in kept] == ["fresh cherries"]
    assert [r["reason_rejected"] for r in rejected] == ["duplicate"]


def test_tag_problems_lists_every_problem_in_the_arbiters_order():
    problems = tag_rules.tag_problems("some Dole stuff", brands=tag_rules.brand_keys(["Dole"]))
    assert problems == [("vague", "some"), ("vague", "stuff"), ("brand", "Dole")]
    assert tag_rules.tag_problems("") == [("blank", "")]
    assert tag_rules.tag_problems("organic baby food") == []


# ----------------------------------------------------------------------------- calendar

def test_holiday_dates_2017():
    assert easter(2017) == date(2017, 4, 16)
    assert nth_weekday(2017, 5, 0, -1) == date(2017, 5, 29)  # Memorial Day: the last Monday of May
    dates = dict((name, d) for d, name in holiday_dates(2017))
    assert dates["Easter"] == date(2017, 4, 16)
    assert dates["Thanksgiving"] == date(2017, 11, 23)
    assert dates["Mother's Day"] == date(2017, 5, 14)
    assert dates["Black Friday"] == date(2017, 11, 24)
    assert "holiday season" not in dates and "holiday season" in [name for name, _, _ in HOLIDAYS]
    assert len(dates) == len(HOLIDAYS) - 1


def test_holidays_between_is_inclusive_ordered_and_crosses_years():
    assert holidays_between(date(2017, 10, 1), date(2017, 11, 30)) == [
        (date(2017, 10, 31), "Halloween"), (date(2017, 11, 23), "Thanksgiving"), (date(2017, 11, 24), "Black Friday")]
    assert holidays_between(date(2017, 12, 25), date(2018, 1, 1)) == [
        (date(2017, 12, 25), "Christmas"), (date(2017, 12, 31), "New Year's Eve"), (date(2018, 1, 1), "New Year's Day")]


def test_upcoming_holidays():
    assert upcoming_holidays(date(2017, 10, 20), 30) == ["Halloween (Oct 31)"]
    assert upcoming_holidays(date(2017, 4, 20)) == ["Cinco de Mayo (May 05)", "Mother's Day (May 14)"]
    # Christmas is 35 days after Nov 20
    assert Environment.at("2017-11-20").holidays == ["Thanksgiving (Nov 23)", "Black Friday (Nov 24)"]


def test_the_bounded_tag_pattern_keeps_every_catalogue_phrase(cj):
    """TAG_PATTERN bounds each word (so vLLM can take the pattern alone); the bound loses no
    completejourney product-type phrase that the unbounded form of the same rule accepts."""
    from agents.expert import TAG_MAX_CHARS, TAG_WORD_CHARS
    from tools.tag_stats import product_type, title_phrase

    unbounded = re.compile(r"^[A-Za-z][A-Za-z'-]*( [A-Za-z][A-Za-z'-]*){1,3}$")
    phrases = {title_phrase(t) for t in cj.items["title"].to_list()}
    fits = {p for p in phrases if unbounded.match(p)}
    assert len(fits) > 1000
    assert {p for p in fits if product_type(p) is None} == set()
    assert max(len(w) for p in fits for w in p.split()) <= TAG_WORD_CHARS
    assert not re.fullmatch(TAG_PATTERN, "a" * (TAG_WORD_CHARS + 1) + " milk")
    assert re.fullmatch(TAG_PATTERN, " ".join(["a" * TAG_WORD_CHARS] * 4)) and TAG_MAX_CHARS == 4 * TAG_WORD_CHARS + 3
