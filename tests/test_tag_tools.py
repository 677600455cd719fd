"""The tag candidate tools on tiny hand-made datasets with known answers: lift, the seasonal rise (earlier
year, holiday run-up, trend), category-kNN, the pool and the tools-only interleave, the LangChain
wrappers, and that no row at or after the run's date reaches any tool."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import polars as pl
import pydantic
import pytest

from behavior.schema import BEHAVIOR_SCHEMA, ITEM_SCHEMA, USER_SCHEMA, Dataset
from tools.candidates import candidate_pool, tools_only_ranking
from tools.tag_stats import (
    Candidate,
    TagStats,
    collaborative_new,
    complements,
    own_types,
    product_type,
    seasonal,
)
from tools.tag_tools import make_tag_tools

T = datetime(2017, 10, 1)

CATALOGUE = {  # item id -> (title, category)
    "chips": ("Potato Chips, 10 oz", "Snacks"),
    "salsa": ("Tomato Salsa", "Sauces"),
    "milk": ("Whole Milk", "Dairy"),
    "bread": ("White Bread", "Bakery"),
    "candy": ("Candy Corn", "Candy"),
    "tea": ("Green Tea", "Drinks"),
    "cocoa": ("Hot Cocoa", "Drinks"),
}


def make(rows: list[tuple[str, str, datetime]]) -> Dataset:
    """A dataset from (user, item, ts) purchases over ``CATALOGUE``."""
    ids = sorted(CATALOGUE)
    items = pl.DataFrame({
        "item_id": ids, "title": [CATALOGUE[i][0] for i in ids], "category": [CATALOGUE[i][1] for i in ids],
        "category_path": [CATALOGUE[i][1] for i in ids], "brand": [None] * len(ids), "price": [None] * len(ids),
        "attributes": ["{}"] * len(ids)}, schema=ITEM_SCHEMA)
    b = pl.DataFrame([{"user_id": u, "item_id": i, "behavior": "purchase", "ts": ts, "query": None, "value": 1.0}
                      for u, i, ts in rows], schema=BEHAVIOR_SCHEMA)
    users = sorted({u for u, _, _ in rows})
    return Dataset(name="tiny", items=items, users=pl.DataFrame({"user_id": users, "attributes": ["{}"] * len(users)},
                                                                 schema=USER_SCHEMA), behaviors=b)


def basket_rows(user: str, items: tuple[str, ...], day: int) -> list[tuple[str, str, datetime]]:
    return [(user, i, T - timedelta(days=day)) for i in items]


def lift_rows() -> list[tuple[str, str, datetime]]:
    """13 baskets: 4 x chips+salsa+milk, 6 x milk+bread, 2 x milk, and the target's chips basket.
    Raw co-occurrence with chips ties salsa and milk (4 each); lift separates them:
    salsa 4*13/(5*4) = 2.6, milk 4*13/(5*12) = 0.867; bread never shares a basket with chips."""
    rows = []
    for k in range(4):
        rows += basket_rows(f"a{k}", ("chips", "salsa", "milk"), 10 + k)
    for k in range(6):
        rows += basket_rows(f"b{k}", ("milk", "bread"), 10 + k)
    for k in range(2):
        rows += basket_rows(f"c{k}", ("milk",), 10 + k)
    rows += basket_rows("target", ("chips",), 3)
    return rows


def test_product_type_is_the_first_comma_part_when_it_is_a_plain_phrase():
    assert product_type("Potato Chips, 10 oz") == "potato chips"
    assert product_type("Milk") is None  # one word
    assert product_type(None) is None


def test_complements_rank_by_lift_not_raw_co_occurrence():
    stats = TagStats.build(make(lift_rows()), T)
    got = complements(stats, "target", n=5, min_support=2)
    assert [c.phrase for c in got] == ["tomato salsa", "whole milk"]
    assert got[0].score == pytest.approx(2.6)
    assert got[1].score == pytest.approx(4 * 13 / (5 * 12), abs=1e-4)
    assert all(c.tool == "complement" for c in got)
    assert "potato chips" in got[0].why
    # support below the threshold drops the pair
    assert complements(stats, "target", n=5, min_support=5) == []


def test_own_types_by_count_then_recency():
    rows = basket_rows("u", ("tea",), 20) + basket_rows("u", ("tea",), 15) + basket_rows("u", ("chips",), 2)
    rows += basket_rows("u", ("salsa",), 9)
    got = own_types(TagStats.build(make(rows), T), "u", n=3)
    assert [(c.phrase, c.score) for c in got] == [("green tea", 2.0), ("potato chips", 1.0), ("tomato salsa", 1.0)]
    assert got[1].why == "bought 1x, last 2 days ago"
    assert own_types(TagStats.build(make(rows), T), "nobody") == []
    # one type per category per round: Drinks (tea 3 + cocoa 2) first, then Snacks, then cocoa
    rows = [("v", "tea", T - timedelta(days=d)) for d in (9, 8, 7)] + [("v", "cocoa", T - timedelta(days=d))
                                                                       for d in (6, 5)]
    rows.append(("v", "chips", T - timedelta(days=1)))
    got = own_types(TagStats.build(make(rows), T), "v")
    assert [c.phrase for c in got] == ["green tea", "potato chips", "hot cocoa"]


def test_collaborative_new_is_category_knn_over_never_bought_categories():
    """cos(Snacks, Sauces) = 3/sqrt(4*3) = 0.866 > cos(Snacks, Dairy) = 3/sqrt(4*4) = 0.75 > Bakery 0."""
    rows = []
    for k, u in enumerate(("a", "b", "c")):
        rows += basket_rows(u, ("chips", "salsa", "milk"), 10 + k)
    rows += basket_rows("d", ("milk", "bread"), 5)
    rows += basket_rows("target", ("chips",), 3)
    got = collaborative_new(TagStats.build(make(rows), T), "target", n=5)
    assert [(c.category, c.phrase) for c in got] == [("Sauces", "tomato salsa"), ("Dairy", "whole milk")]
    assert got[0].score == pytest.approx(math.log(2) * 3 / math.sqrt(12), abs=1e-4)
    assert all(c.tool == "collaborative" for c in got)


def _seasonal_rows(start: datetime, rising_days: range, base_days: range) -> list[tuple[str, str, datetime]]:
    """Tea bought steadily every day; candy corn 25 times in ``rising_days`` only (days after ``start``)."""
    rows = [(f"t{d % 5}", "tea", start + timedelta(days=d)) for d in base_days]
    rows += [(f"t{d % 5}", "tea", start + timedelta(days=d, hours=1)) for d in rising_days]
    rows += [(f"k{k}", "candy", start + timedelta(days=rising_days[k % len(rising_days)], hours=2))
             for k in range(25)]
    return rows


def test_seasonal_falls_back_to_the_trend_when_no_earlier_year_is_covered():
    # data starts 120 days before T; candy corn only in the last 28 days
    start = T - timedelta(days=120)
    stats = TagStats.build(make(_seasonal_rows(start, range(93, 120), range(0, 93))), T)
    got = seasonal(stats, n=5)
    assert [c.phrase for c in got] == ["candy corn"]
    assert "last 28 days" in got[0].why and got[0].tool == "season"


@pytest.mark.parametrize(("now", "start", "rise", "why"), [
    # a year earlier candy corn rose from Oct 17 to Oct 31: the run-up to Halloween
    (datetime(2018, 10, 5), datetime(2017, 8, 1), (datetime(2017, 10, 17), datetime(2017, 10, 31)),
     "before Halloween last year"),
    # the coming weeks a year earlier are 2017-06-02 .. 06-30; the rise starts 06-20, after Father's Day,
    # so the holiday run-up does not see it
    (datetime(2018, 6, 1), datetime(2017, 3, 1), (datetime(2017, 6, 20), datetime(2017, 6, 28)),
     "in the 28 days after Jun 02 last year"),
])
def test_seasonal_reads_an_earlier_year(now, start, rise, why):
    rising = range((rise[0] - start).days, (rise[1] - start).days)
    stats = TagStats.build(make(_seasonal_rows(start, rising, range(0, 400))), now)
    got = seasonal(stats, n=5)
    assert [c.phrase for c in got] == ["candy corn"]
    assert got[0].why.endswith(why)


def test_no_row_at_or_after_the_run_date_reaches_any_tool():
    base = lift_rows()
    planted = base + [("target", "salsa", T), ("target", "bread", T + timedelta(days=1)),
                      ("a0", "candy", T + timedelta(hours=1))]
    before = TagStats.build(make(base), T)
    pool_before = candidate_pool(before, "target")
    after = TagStats.build(make(planted), T)
    assert candidate_pool(after, "target") == pool_before
    assert complements(after, "target", min_support=2) == complements(before, "target", min_support=2)
    assert seasonal(after, "target") == seasonal(before, "target")


def test_pool_dedups_and_the_tools_only_ranking_interleaves_two_own_per_round():
    def cands(tool, k):
        return [Candidate(f"{tool} thing {chr(97 + i)}", "Cat", tool, float(k - i), "x") for i in range(k)]

    pool = cands("own", 5) + cands("collaborative", 1) + cands("complement", 2) + cands("season", 0)
    got = [c.phrase for c in tools_only_ranking(pool, n=9)]
    assert got == ["own thing a", "own thing b", "collaborative thing a", "complement thing a",
                   "own thing c", "own thing d", "complement thing b", "own thing e"]
    assert [c.phrase for c in tools_only_ranking(pool, n=3)] == got[:3]
    # the real pool: a phrase appears once even when two tools find it
    stats = TagStats.build(make(lift_rows()), T)
    phrases = [c.phrase for c in candidate_pool(stats, "target")]
    assert len(phrases) == len(set(phrases)) and "potato chips" in phrases


def test_langchain_tools_validate_their_arguments_and_return_candidates():
    stats = TagStats.build(make(lift_rows()), T)
    tools = {t.name: t for t in make_tag_tools(stats)}
    assert set(tools) == {"own_types", "complements", "seasonal", "collaborative_new"}
    got = tools["own_types"].invoke({"user_id": "target", "n": 1})
    assert got == [{"phrase": "potato chips", "category": "Snacks", "tool": "own", "score": 1.0,
                    "why": "bought 1x, last 3 days ago"}]
    with pytest.raises(pydantic.ValidationError):
        tools["complements"].invoke({"user_id": "target", "n": 0})
