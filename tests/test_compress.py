"""Hierarchical behaviour compression: losslessness within budget, the budget, determinism, drop order,
buckets and the summary, on the real datasets and on small hand-made histories."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta

import polars as pl
import pytest

from behavior.compress import (
    CompressionConfig,
    compress_history,
    compress_user,
    core_label,
    parse_block,
    unique_labels,
)
from behavior.schema import BEHAVIOR_SCHEMA, DEFAULT_WEIGHTS, ITEM_SCHEMA, USER_SCHEMA, Dataset
from behavior.tokens import GGUFTokenCounter, get_token_counter
from core.errors import EmptyHistoryError, IntentRecError

BIG = CompressionConfig(budget=10**7)


def sample_users(ds: Dataset, n: int, seed: int = 7) -> list[str]:
    return random.Random(seed).sample(sorted(ds.users["user_id"].to_list()), n)


def check_lossless(ds: Dataset, uid: str, res, cfg: CompressionConfig) -> None:
    """Every item that passes the behaviour filter is in the block with its count and latest date."""
    hist = ds.history(uid)
    kept = hist.filter(pl.col("behavior").map_elements(cfg.keeps, return_dtype=pl.Boolean))
    truth_count = Counter(kept["item_id"].to_list())
    truth_last = {r["item_id"]: r["ts"].date() for r in kept.group_by("item_id").agg(pl.col("ts").max())
                  .iter_rows(named=True)}
    label_to_item = {it.label: it.item_id for it in res.items}
    assert len(label_to_item) == len(res.items)  # labels are unique
    got_count: Counter[str] = Counter()
    got_last: dict[str, date] = {}
    for e in parse_block(res.text):
        iid = label_to_item[e.label]
        got_count[iid] += e.count
        if e.date is not None:
            got_last[iid] = max(got_last.get(iid, date.min), e.date)
    assert got_count == truth_count
    assert got_last == truth_last
    assert res.stats.distinct_items_retained == res.stats.distinct_items_kept == len(truth_count)
    assert res.stats.events_retained == res.stats.events_kept == kept.height


# ----- the real datasets -----------------------------------------------------------------------------
def test_lossless_within_budget_on_real_users(cj, taobao, movielens, count_tokens):
    checked = 0
    for ds, n in ((cj, 12), (taobao, 12), (movielens, 8)):
        for uid in sample_users(ds, n):
            res = compress_user(ds, uid, count_tokens, BIG)
            assert res.stats.within_budget
            check_lossless(ds, uid, res, BIG)
            checked += 1
    assert checked == 32


def test_lossless_with_behaviour_filter(taobao, count_tokens):
    cfg = CompressionConfig(budget=10**7, min_weight=0.5)  # views (0.3) go
    for uid in sample_users(taobao, 8, seed=3):
        res = compress_user(taobao, uid, count_tokens, cfg)
        check_lossless(taobao, uid, res, cfg)
        assert "view" not in {e.behavior for e in parse_block(res.text)}
        n_views = taobao.history(uid).filter(pl.col("behavior") == "view").height
        assert res.stats.filtered_out == ({"view": n_views} if n_views else {})
        if n_views:
            assert res.stats.reduction_behavior_level > 0


@pytest.mark.parametrize("budget", [0, 8, 60, 400, 1500, 4096])
def test_budget_never_exceeded(cj, taobao, count_tokens, budget):
    users = [(cj, u) for u in sample_users(cj, 10, seed=budget)] + [(taobao, u) for u in sample_users(taobao, 4)]
    for ds, uid in users:
        res = compress_user(ds, uid, count_tokens, CompressionConfig(budget=budget))
        tokens = count_tokens(res.text)
        assert tokens == res.stats.compressed_tokens <= budget
        st, d = res.stats, res.stats.dropped_by_budget
        if st.within_budget:
            assert d.entries == 0 and res.text == compress_user(ds, uid, count_tokens, BIG).text
        elif res.text:
            assert res.text.startswith(f"omitted(events: {d.events}, items: {d.items})")
            assert d.events + st.events_retained == st.events_kept
            assert d.items + st.distinct_items_retained == st.distinct_items_kept
        else:  # nothing fits, not even the omitted(...) line
            assert st.distinct_items_retained == 0 and res.items == []


def test_deterministic(cj, count_tokens):
    uid = "1000"
    a = compress_user(cj, uid, count_tokens, CompressionConfig(budget=1500))
    b = compress_user(cj, uid, count_tokens, CompressionConfig(budget=1500))
    assert a.model_dump() == b.model_dump()
    shuffled = cj.history_with_items(uid).sample(fraction=1.0, shuffle=True, seed=1)
    c = compress_history(shuffled, count_tokens, CompressionConfig(budget=1500), now=a.now, user_id=uid)
    assert c.model_dump() == a.model_dump()


def _bucket_key(label: str) -> tuple[date, int]:
    if len(label) == 10:
        return date.fromisoformat(label), 2
    if len(label) == 7:
        return date(int(label[:4]), int(label[5:]), 1), 1
    return date(int(label), 1, 1), 0


def test_drop_order_lowest_confidence_then_oldest(taobao, cj, count_tokens):
    # taobao user 1000001 mixes views and a purchase; completejourney user 1000 is all purchases
    for ds, uid, budget in ((taobao, "1000001", 150), (cj, "1000", 1500)):
        full = parse_block(compress_user(ds, uid, count_tokens, BIG).text)
        cut = compress_user(ds, uid, count_tokens, CompressionConfig(budget=budget))
        assert not cut.stats.within_budget and cut.stats.dropped_by_budget.entries > 0
        kept = {(e.bucket, e.behavior, e.label, e.count) for e in parse_block(cut.text)}
        dropped = [e for e in full if (e.bucket, e.behavior, e.label, e.count) not in kept]
        retained = [e for e in full if (e.bucket, e.behavior, e.label, e.count) in kept]
        assert len(dropped) == cut.stats.dropped_by_budget.entries

        def key(e):
            return DEFAULT_WEIGHTS[e.behavior], _bucket_key(e.bucket)

        assert max(map(key, dropped)) <= min(map(key, retained))
    # on the taobao user every view goes before the purchase
    tb = compress_user(taobao, "1000001", count_tokens, CompressionConfig(budget=60))
    assert [e.behavior for e in parse_block(tb.text)] == ["purchase"]


def test_overall_reduction_on_completejourney(cj, count_tokens):
    res = [compress_user(cj, u, count_tokens) for u in sample_users(cj, 15, seed=11)]
    red = sorted(r.stats.reduction_overall for r in res)
    assert red[len(red) // 2] >= 0.75
    assert all(r.stats.reduction_behavior_level == 0.0 for r in res)  # purchases only: nothing to filter


# ----- hand-made histories ---------------------------------------------------------------------------
NOW = datetime(2018, 1, 1, 12, 0)


def make_dataset(events: list[tuple[str, str, str, datetime]], items: dict[str, tuple[str, str, dict]]) -> Dataset:
    """events: (user, item, behavior, ts); items: id -> (title, category, attributes)."""
    import json

    it = pl.DataFrame([{"item_id": k, "title": t, "category": c, "category_path": c, "brand": None,
                        "price": None, "attributes": json.dumps(a)} for k, (t, c, a) in items.items()],
                      schema=ITEM_SCHEMA)
    beh = pl.DataFrame([{"user_id": u, "item_id": i, "behavior": b, "ts": ts, "query": None, "value": None}
                        for u, i, b, ts in events], schema=BEHAVIOR_SCHEMA)
    users = pl.DataFrame([{"user_id": u, "attributes": "{}"} for u in sorted({e[0] for e in events})],
                         schema=USER_SCHEMA)
    return Dataset(name="test", items=it, users=users, behaviors=beh)


ITEMS = {
    "s": ("Apple Sauce, 24 oz", "Fruit", {"package_size": "24 OZ"}),
    "h": ("Honey", "Spreads", {}),
    "i": ("Crushed Ice", "Ice", {}),
    "m": ("Milk", "Dairy", {}),
}


def days_ago(n: int, hour: int = 9) -> datetime:
    return (NOW - timedelta(days=n)).replace(hour=hour)


def test_buckets_coarsen_with_age_and_keep_the_latest_date(count_tokens):
    ev = [
        ("u", "h", "purchase", datetime(2016, 5, 3, 9)),   # year bucket (2016)
        ("u", "h", "purchase", datetime(2016, 8, 12, 9)),  # year bucket (2016), h's latest in it: @08-12
        ("u", "i", "purchase", datetime(2016, 8, 12, 10)),
        ("u", "s", "purchase", datetime(2017, 11, 3, 9)),   # month bucket (2017-11)
        ("u", "s", "purchase", datetime(2017, 11, 20, 9)),
        ("u", "s", "purchase", datetime(2017, 11, 28, 9)),  # s's latest: @28
        ("u", "i", "cart", datetime(2017, 11, 20, 9)),
        ("u", "m", "purchase", days_ago(2)),               # day bucket
        ("u", "m", "view", days_ago(2, 10)),
    ]
    ds = make_dataset(ev, ITEMS)
    res = compress_user(ds, "u", count_tokens, BIG, now=NOW)
    # crushed ice's latest event is the 2017-11-20 cart, so its 2016 entry carries no date
    assert res.text == ("2016(purchase: honey x2 @08-12, crushed ice) | "
                        "2017-11(purchase: apple sauce x3 @28; cart: crushed ice @20) | "
                        "2017-12-30(purchase: milk; view: milk)")
    assert res.stats.buckets == {"day": 1, "month": 1, "year": 1}
    last = {it.label: it.last_date for it in res.items}
    assert last == {"honey": date(2016, 8, 12), "crushed ice": date(2017, 11, 20),
                    "apple sauce": date(2017, 11, 28), "milk": date(2017, 12, 30)}
    parsed = {(e.bucket, e.behavior, e.label): (e.count, e.date) for e in parse_block(res.text)}
    assert parsed[("2017-11", "purchase", "apple sauce")] == (3, date(2017, 11, 28))
    assert parsed[("2016", "purchase", "crushed ice")] == (1, None)
    assert parsed[("2017-11", "cart", "crushed ice")] == (1, date(2017, 11, 20))
    s = res.summary
    assert s.behavior_counts == {"purchase": 7, "cart": 1, "view": 1}
    assert s.first_date == date(2016, 5, 3) and s.last_date == date(2017, 12, 30) and s.days_since_last == 2
    assert [(p.label, p.count, p.days_ago) for p in s.recent_purchases] == [("milk", 1, 2)]
    assert [(c.category, c.count) for c in s.top_categories] == [("Fruit", 3), ("Dairy", 2), ("Ice", 2),
                                                                 ("Spreads", 2)]


def test_thresholds_and_now_are_injectable(count_tokens):
    ev = [("u", "h", "purchase", datetime(2017, 12, 1, 9)), ("u", "h", "purchase", datetime(2017, 12, 5, 9)),
          ("u", "i", "purchase", datetime(2017, 6, 1, 9))]
    ds = make_dataset(ev, ITEMS)
    all_days = compress_user(ds, "u", count_tokens, CompressionConfig(day_days=400, month_days=400), now=NOW)
    assert all_days.text == "2017-06-01(purchase: crushed ice) | 2017-12-01(purchase: honey) | " \
                            "2017-12-05(purchase: honey)"
    years = compress_user(ds, "u", count_tokens, CompressionConfig(day_days=0, month_days=0), now=NOW)
    assert years.text == "2017(purchase: honey x2 @12-05, crushed ice @06-01)"
    # now is a cutoff: only behaviours strictly before it are used
    early = compress_user(ds, "u", count_tokens, BIG, now=datetime(2017, 12, 3))
    assert early.text == "2017-06-01(purchase: crushed ice) | 2017-12-01(purchase: honey)"
    assert early.summary.days_since_last == 2
    with pytest.raises(EmptyHistoryError):
        compress_user(ds, "u", count_tokens, BIG, now=datetime(2017, 1, 1))


def test_single_day_coarse_bucket_is_labelled_with_its_day(count_tokens):
    ev = [("u", "h", "purchase", datetime(2016, 3, 4, 9)), ("u", "i", "purchase", datetime(2016, 3, 4, 11))]
    res = compress_user(make_dataset(ev, ITEMS), "u", count_tokens, BIG, now=NOW)
    assert res.text == "2016-03-04(purchase: crushed ice, honey)"  # same count: most recent first


def test_filter_keep_types_and_empty_result(count_tokens):
    ev = [("u", "h", "click", days_ago(1)), ("u", "i", "view", days_ago(1)), ("u", "m", "cart", days_ago(1))]
    ds = make_dataset(ev, ITEMS)
    default = compress_user(ds, "u", count_tokens, BIG, now=NOW)
    assert default.stats.filtered_out == {"click": 1}  # clicks (0.2) are below 0.25; views stay
    only_cart = compress_user(ds, "u", count_tokens, CompressionConfig(keep_types=("cart",)), now=NOW)
    assert only_cart.text == "2017-12-31(cart: milk)"
    nothing = compress_user(ds, "u", count_tokens, CompressionConfig(keep_types=("purchase",)), now=NOW)
    assert nothing.text == "" and nothing.items == [] and nothing.stats.compressed_tokens == 0
    assert nothing.summary.behavior_counts == {"cart": 1, "view": 1, "click": 1}


def test_labels_core_attributes_and_collisions():
    assert core_label("Kids Cereal, 14.5 oz", {"package_size": "14.5 OZ"}, 10) == "kids cereal"
    assert core_label("American President, The (1995)", {"year": "1995"}, 10) == "american president the 1995"
    assert core_label("Eggs - Large, 6 ct", {"package_size": "6 CT"}, 10) == "eggs large"
    assert core_label("AA batteries x4", {}, 10) == "aa batteries x 4"  # never reads as a count
    assert core_label("one two three four five six", {}, 3) == "one two three"
    labels = unique_labels({"b": ("Soup, 10 oz", {"s": "10 oz"}), "a": ("Soup, 12 oz", {"s": "12 oz"}),
                            "c": ("Soup", {})}, 10)
    assert labels == {"a": "soup", "b": "soup #2", "c": "soup #3"}


def test_parse_block_reads_search_queries_and_omitted():
    text = 'omitted(events: 3, items: 1) | 2017-11(search: "oat milk" milk x2 @05; purchase: honey)'
    got = parse_block(text)
    assert [(e.behavior, e.query, e.label, e.count, e.date) for e in got] == [
        ("search", "oat milk", "milk", 2, date(2017, 11, 5)), ("purchase", None, "honey", 1, None)]


def test_search_query_survives(count_tokens):
    import json

    it = pl.DataFrame([{"item_id": "m", "title": "Milk", "category": "Dairy", "category_path": "Dairy",
                        "brand": None, "price": None, "attributes": json.dumps({})}], schema=ITEM_SCHEMA)
    beh = pl.DataFrame([{"user_id": "u", "item_id": "m", "behavior": "search", "ts": days_ago(40),
                         "query": "Oat, milk!", "value": None}], schema=BEHAVIOR_SCHEMA)
    ds = Dataset(name="t", items=it, users=pl.DataFrame({"user_id": ["u"], "attributes": ["{}"]}), behaviors=beh)
    res = compress_user(ds, "u", count_tokens, BIG, now=NOW)
    assert res.text == '2017-11-22(search: "oat milk!" milk)'
    assert parse_block(res.text)[0].query == "oat milk!"


# ----- tokens ----------------------------------------------------------------------------------------
def test_token_counter(count_tokens):
    assert get_token_counter() is count_tokens  # one per process
    assert count_tokens("") == 0
    assert count_tokens("hello world") == 2
    assert count_tokens.count("2017-11(purchase: apple sauce x3)") == len(
        count_tokens.tokenize("2017-11(purchase: apple sauce x3)")) > 5
    with pytest.raises(IntentRecError, match="tokenizer GGUF not found"):
        GGUFTokenCounter("no/such/model.gguf")


def test_counter_is_injected(count_tokens):
    calls: defaultdict[str, int] = defaultdict(int)

    def chars(text: str) -> int:
        calls["n"] += 1
        return len(text)

    ds = make_dataset([("u", "h", "purchase", days_ago(1))], ITEMS)
    res = compress_user(ds, "u", chars, BIG, now=NOW)
    assert res.stats.compressed_tokens == len(res.text) == len("2017-12-31(purchase: honey)")
    assert calls["n"] >= 2


def test_dataset_weights_reach_the_filter(count_tokens):
    ev = [("u", "h", "share", days_ago(1)), ("u", "m", "purchase", days_ago(1))]
    ds = make_dataset(ev, ITEMS)
    ds.weights = {**DEFAULT_WEIGHTS, "share": 0.1}  # as LoadPolicies(weights=...) would set it
    res = compress_user(ds, "u", count_tokens, BIG, now=NOW)
    assert res.stats.filtered_out == {"share": 1} and res.text == "2017-12-31(purchase: milk)"
    own = compress_user(ds, "u", count_tokens, CompressionConfig(weights={"share": 0.9, "purchase": 1.0}), now=NOW)
    assert own.text == "2017-12-31(purchase: milk; share: honey)"


def test_keyword_overrides(count_tokens):
    ds = make_dataset([("u", "h", "purchase", days_ago(1)), ("u", "m", "view", days_ago(1))], ITEMS)
    res = compress_user(ds, "u", count_tokens, now=NOW, budget=7, min_weight=0.5)
    assert res.stats.budget == 7 and res.stats.filtered_out == {"view": 1}
    with pytest.raises(ValueError, match="budgte"):
        compress_user(ds, "u", count_tokens, now=NOW, budgte=7)


def test_the_token_count_is_the_length_of_the_tokenisation(count_tokens):
    """``count`` asks llama.cpp for the length alone; it must equal ``len(tokenize(...))``, also past the
    model's training context (8,192 tokens), where ``tokenize`` has to retry with a larger buffer."""
    long = "Bananas, 40 lb: a regular ☃ in your basket, bought again and again.\n" * 900
    texts = ["", "a", "milk", " leading and trailing spaces ", "2017-06-01 purchase | BREAD WHITE | qty 2", long]
    counts = [count_tokens.count(t) for t in texts]
    assert counts == [len(count_tokens.tokenize(t)) for t in texts]
    assert counts[0] == 0 and counts[-1] > 8192
