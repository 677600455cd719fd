"""Catalogues a new user brings as CSV (``csv:DIR``, behavior/adapters/csv_generic.py) build a retriever
that means something: no categories, a coarse ``department > aisle`` path with real titles, a single
category, a single user, no text at all. Each dataset is written as CSV into a tmp dir and loaded
through the adapter; builds are tiny (a few hundred rows, small towers)."""

from __future__ import annotations

import csv
import math
import random
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from behavior.adapters import load_dataset
from core.errors import DataError
from retrieval.catalogue import build_catalogue, choose_text_source, item_text, title_tag
from retrieval.service import load_or_build_retriever
from retrieval.settings import RetrievalSettings
from retrieval.text_encoder import TextEncoder

TINY = RetrievalSettings(epochs=2, batch_size=64, dim=32, hidden=64, id_dim=16, seed=3)

AISLES = {  # department > aisle -> (modifiers, core words): 5 x 11 = 55 titles per aisle
    "produce > packaged vegetables fruits": (
        ["Organic Baby", "Fresh", "Chopped", "Family Size", "Organic"],
        ["Spinach", "Kale", "Arugula", "Carrots", "Spring Mix", "Romaine Hearts", "Broccoli Florets",
         "Green Beans", "Celery Sticks", "Snap Peas", "Cauliflower Rice"]),
    "produce > fresh fruits": (
        ["Organic", "Large", "Seedless", "Sweet", "Ripe"],
        ["Bananas", "Strawberries", "Blueberries", "Grapes", "Mango", "Pineapple", "Lemons", "Limes",
         "Honeycrisp Apples", "Navel Oranges", "Peaches"]),
    "dairy eggs > yogurt": (
        ["Greek", "Low Fat", "Whole Milk", "Nonfat", "Vanilla"],
        ["Yogurt Cups", "Plain Yogurt", "Strawberry Yogurt", "Blueberry Yogurt", "Peach Yogurt",
         "Skyr", "Kefir", "Yogurt Drink", "Honey Yogurt", "Coconut Yogurt", "Lemon Yogurt"]),
    "snacks > chips pretzels": (
        ["Kettle Cooked", "Baked", "Sea Salt", "Barbecue", "Sour Cream"],
        ["Potato Chips", "Tortilla Chips", "Pretzel Twists", "Pita Chips", "Veggie Straws", "Corn Chips",
         "Pretzel Rods", "Rice Crisps", "Popcorn", "Plantain Chips", "Pork Rinds"]),
}
SPINACH = "Organic Baby Spinach, 5 oz"


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_dataset(root: Path, items: list[dict], *, n_users: int, per_user: int, seed: int = 0) -> str:
    """items.csv from ``items`` (dicts with the item columns) and behaviors.csv with seeded purchases:
    each user buys mostly from two "aisles" (items grouped by category path, or by position when there
    is none), so co-purchase has structure to learn. Returns the ``csv:DIR`` spec."""
    root.mkdir(parents=True, exist_ok=True)
    cols = list(items[0])
    write_csv(root / "items.csv", cols, [[it[c] for c in cols] for it in items])
    groups: dict[str, list[str]] = {}
    for j, it in enumerate(items):
        groups.setdefault(it.get("category_path") or it.get("category") or str(j % 4), []).append(it["item_id"])
    keys = sorted(groups)
    rng = random.Random(seed)
    t0 = datetime(2020, 1, 1)
    rows = []
    for u in range(n_users):
        fav = rng.sample(keys, min(2, len(keys)))
        for e in range(per_user):
            pool = groups[fav[0] if e % 3 else fav[-1]] if rng.random() < 0.9 else groups[rng.choice(keys)]
            rows.append([f"u{u}", rng.choice(pool), "purchase", (t0 + timedelta(days=e, hours=u)).isoformat()])
    write_csv(root / "behaviors.csv", ["user_id", "item_id", "behavior", "timestamp"], rows)
    return f"csv:{root}"


def aisle_items() -> list[dict]:
    out = []
    for path, (mods, cores) in AISLES.items():
        for m in mods:
            for c in cores:
                title = SPINACH if (m, c) == ("Organic Baby", "Spinach") else f"{m} {c}, {len(out) % 7 + 8} oz"
                out.append({"item_id": f"p{len(out):03d}", "title": title, "category": "", "category_path": path})
    return out


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return TextEncoder(cache_dir=tmp_path_factory.getbasetemp() / "robust-text-cache")


def build(spec: str, root: Path, encoder: TextEncoder, **updates):
    ds = load_dataset(spec)
    return ds, load_or_build_retriever(ds, TINY.model_copy(update=updates), progress=False, root=root / "ret",
                                       encoder=encoder)


def assert_finite_scores(result) -> None:
    assert result.candidates
    assert all(math.isfinite(c.score) for c in result.candidates)


# ----- the text-source rule ---------------------------------------------------------------------------

def test_title_tag_is_a_short_lower_case_phrase():
    assert title_tag(SPINACH) == "organic baby spinach"
    assert title_tag("Toy Story (1995)") == "toy story"
    assert title_tag("Kettle Cooked Sea Salt & Vinegar Potato Chips Family Pack") == "kettle cooked sea salt vinegar"
    assert title_tag("12 oz") == "oz" and title_tag("1995") == ""
    assert title_tag(None) == ""


def test_auto_rule_thresholds():
    titles = [f"t{i}" for i in range(100)]
    assert choose_text_source(["aisle a"] * 50 + ["aisle b"] * 50, titles) == "title"  # 50 items per text
    assert choose_text_source([f"type {i % 4}" for i in range(98)] + ["x", "y"], titles) == "path"  # 16.7
    assert choose_text_source([""] * 100, titles) == "title"  # no path at all
    assert choose_text_source(["aisle a"] * 100, ["same"] * 100) == "path"  # titles not distinct
    assert choose_text_source(["aisle a"] * 100, titles[:49] + [""] * 51) == "path"  # 49% distinct


def test_completejourney_keeps_the_path_under_auto(cj):
    leaves = [(cp or "").split(" > ")[-1] for cp in cj.items["category_path"].to_list()]
    texts = [item_text(lf, c) for lf, c in zip(leaves, cj.items["category"].to_list(), strict=True)]
    n, distinct = len(texts), len(set(texts))
    assert n == 92_331 and distinct == 3_863  # 23.9 items per text: product types are fine enough
    assert 23 < n / distinct < 25
    assert choose_text_source(texts, cj.items["title"].to_list()) == "path"


# ----- builds from user CSVs --------------------------------------------------------------------------

def test_empty_category_catalogue_builds_with_title_tags(tmp_path, encoder):
    items = [it | {"category": "", "category_path": ""} for it in aisle_items()[::5]]  # 44 items, no categories
    spec = write_dataset(tmp_path / "nocat", items, n_users=12, per_user=20)
    ds, r = build(spec, tmp_path, encoder)
    assert set(ds.items["category"].to_list()) == {""}
    cat = build_catalogue(ds.items)
    assert cat.text_source == "title"
    assert r.config["n_item_texts"] == 44 and r.config["n_tags"] == 44  # one title text and title tag each
    terms = r.config["train"]["loss_terms"]
    assert terms["tag"]["active"] is True
    assert terms["cate"] == {"active": False, "reason": "the trained items have no category: nothing to tell apart"}
    assert all(e["cate"] == 0.0 for e in r.config["train"]["epochs"])
    res = r.search("no-such-user", ["organic baby spinach"], 5)
    assert_finite_scores(res)
    assert len(res.candidates) == 5 and all(c.sources == ["tag"] for c in res.candidates)


def test_aisle_path_with_titles_uses_titles_and_finds_the_spinach(tmp_path, encoder):
    spec = write_dataset(tmp_path / "aisles", aisle_items(), n_users=60, per_user=40, seed=1)
    ds, r = build(spec, tmp_path, encoder, epochs=6, lr=3e-3)
    cat = build_catalogue(ds.items)
    assert len(cat) == 220 and cat.text_source == "title"
    assert build_catalogue(ds.items, text_source="path").texts == sorted(
        p.split(" > ")[-1] for p in AISLES)  # what the path alone would give: 4 texts for 220 items
    spinach = ds.items.filter(ds.items["title"] == SPINACH)["item_id"].item()
    assert cat.tags[cat.item_ids.index(spinach)] == ["organic baby spinach", "packaged vegetables fruits"]
    assert r.config["n_item_texts"] == 220
    assert r.config["train"]["loss_terms"]["cate"]["active"] is True  # 4 aisles
    res = r.search("no-such-user", ["organic baby spinach"], 5)
    assert spinach in [c.item_id for c in res.candidates]
    # different tags reach different items (the tag channel is not one list for everyone)
    other = r.search("no-such-user", ["barbecue potato chips"], 5)
    assert not {c.item_id for c in res.candidates} & {c.item_id for c in other.candidates}
    assert all("Chips" in c.title or "Barbecue" in c.title for c in other.candidates)


def test_one_category_catalogue_builds_with_l_cate_off(tmp_path, encoder):
    items = [it | {"category": "Snacks", "category_path": ""} for it in aisle_items()[165:]]  # 55 chips
    spec = write_dataset(tmp_path / "onecat", items, n_users=15, per_user=20)
    ds, r = build(spec, tmp_path, encoder)
    assert build_catalogue(ds.items).text_source == "title"  # one path text says nothing about an item
    terms = r.config["train"]["loss_terms"]
    assert terms["cate"]["active"] is False
    assert terms["cate"]["reason"] == "the trained items have a single category: nothing to tell apart"
    assert terms["tag"]["active"] is True and terms["col"]["active"] is True
    assert all(e["cate"] == 0.0 and e["tag"] > 0 for e in r.config["train"]["epochs"])
    assert_finite_scores(r.search("u0", ["sea salt pita chips"], 5))


def test_one_user_dataset_builds(tmp_path, encoder):
    spec = write_dataset(tmp_path / "oneuser", aisle_items()[:30], n_users=1, per_user=25)
    ds, r = build(spec, tmp_path, encoder)
    assert r.config["n_users"] == 1 and r.user_ids == ["u0"]
    losses = [e["loss"] for e in r.config["train"]["epochs"]]
    assert all(math.isfinite(v) for v in losses)
    res = r.search("u0", ["fresh kale"], 5, beta=1.0)
    assert_finite_scores(res)
    assert len(res.candidates) == 5


def test_dataset_without_any_text_fails_clearly(tmp_path, encoder):
    items = [{"item_id": f"i{j}", "title": "", "category": ""} for j in range(20)]
    spec = write_dataset(tmp_path / "notext", items, n_users=5, per_user=10)
    ds = load_dataset(spec)
    with pytest.raises(DataError, match=r"no item text: all 20 items have an empty title, category and "
                                        r"category_path; fill at least the 'title' or 'category' column"):
        load_or_build_retriever(ds, TINY, progress=False, root=tmp_path / "ret", encoder=encoder)
