"""Item features for the item tower, and the catalogue-text bootstrap tags.

Item attributes (each a small vocabulary, code 0 = missing):

* ``top``: first level of the category path (completejourney: department);
* ``category``: the dataset's leaf category (completejourney: product_category, 303 values);
* ``leaf``: last level of the category path (completejourney: product_type, ~3.9k values);
* ``brand``: brand (completejourney: only "National" / "Private");
* ``price``: price decile over the catalogue (completejourney has no prices, so all "missing");
* **free attributes** from the items' ``attributes`` JSON (:func:`free_attribute_keys`): keys present
  on at least 30% of items, with between 2 and 50% as many distinct values as items (an id-like key, one value per item, is left out), and not a copy of
  the category path. On completejourney that picks ``manufacturer_id`` and ``package_size``, which
  let the towers generalise to unseen items of a product line the user already buys.

**Item text** comes from the category path or from the titles, chosen from the data by
:func:`choose_text_source` (``RetrievalSettings.item_text = "auto"``; ``"path"`` / ``"title"`` force one).
The path text is short, ``"<leaf> (<category>)"``, e.g. ``"Premium (Ice Cream/Milk/Sherbts)"``: on
completejourney 3,863 distinct strings for 92k items (~24 items per text, product types as leaves),
so MiniLM runs over ~4k texts instead of 17k distinct titles, which add little ("Kids Cereal, 14.5
oz"). A coarse path (``department > aisle``: hundreds of items per text) names no product, so there the
titles are the item texts. The resolved choice is ``Catalogue.text_source``. An item with no path text
falls back to its title, and a catalogue with neither titles nor categories is a ``DataError``.

**Bootstrap tags** follow RecGPT's "modifier + core word" form, built from the category path. Each item
gets two: a fine tag where the leaf is the modifier and the category the core word, with words the
leaf already says dropped from the core ("Premium" + "Ice Cream/Milk/Sherbts" →
``"premium ice cream/milk/sherbts"``; "Frozen Pizza" + "Frozen" → ``"frozen pizza"``), and a coarse
tag, the category name ("cold cereal", "bag snacks"), which on grocery data is itself usually a
modifier + core word. Training on both teaches the tag tower specific and broad intents. When the
item texts are titles, or an item has no category at all, the item also gets a title tag
(:func:`title_tag`: "Organic Baby Spinach, 5 oz" → ``"organic baby spinach"``), first. LLM tags
from logged runs are added per item by :func:`load_llm_tag_pairs` (JSONL with ``tag`` and ``item_id``).

The evaluation's tag-only variant (and a fallback for the graph) uses :func:`recent_category_tags`:
the category tags of the user's 10 most recent distinct categories. Measured on completejourney
(T = 2017-10-01), those categories contain 14% of the items users buy for the first time in the next
28 days; the 10 most recent *leaves* (product types) contain only 5%, so leaf-level tags cap the
tag channel's explore recall far lower.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from behavior.schema import Dataset
from core.errors import DataError, EmptyHistoryError, UnknownUserError

ATTRIBUTES = ("top", "category", "leaf", "brand", "price")
TEXT_SOURCES = ("auto", "path", "title")
#: "auto" uses titles when the path is this coarse (items per distinct path text); see choose_text_source
COARSE_ITEMS_PER_PATH_TEXT = 50
#: ... and at least this share of items has a title of its own (distinct titles / items)
MIN_DISTINCT_TITLE_SHARE = 0.5
#: words kept in a title tag
TITLE_TAG_WORDS = 5
_WORD = re.compile(r"[a-z0-9]+")
_TITLE_CUT = re.compile(r"[,;(\[|]| - ")


def _norm_space(s: str) -> str:
    return " ".join(s.split())


def bootstrap_tag(leaf: str | None, category: str | None) -> str:
    """"modifier + core word" tag from an item's category-path leaf and category (lower case)."""
    leaf = _norm_space((leaf or "").lower())
    cat = _norm_space((category or "").lower())
    if not leaf:
        return cat
    if not cat or cat == leaf:
        return leaf
    leaf_words = set(_WORD.findall(leaf))
    core = [w for w in cat.split(" ") if not set(_WORD.findall(w)) <= leaf_words]
    return _norm_space(f"{leaf} {' '.join(core)}")


def category_tag(category: str | None) -> str:
    """Coarse tag: the category name itself (lower case), e.g. "cold cereal", "frozen pizza"."""
    return _norm_space((category or "").lower())


def item_tags(leaf: str | None, category: str | None) -> list[str]:
    """An item's bootstrap tags: the fine "leaf + category" tag, then the coarse category tag."""
    out = []
    for t in (bootstrap_tag(leaf, category), category_tag(category)):
        if t and t not in out:
            out.append(t)
    return out


def title_tag(title: str | None) -> str:
    """Short lower-case phrase of a title: the part before the first ``,;([|`` or `` - ``, without
    words holding digits (sizes, years), at most ``TITLE_TAG_WORDS`` words ("Toy Story (1995)" →
    ``"toy story"``); "" when nothing is left."""
    head = _TITLE_CUT.split((title or "").lower(), maxsplit=1)[0]
    words = [w for w in (w.strip(".:'\"!?*/&-") for w in head.split()) if w and not any(c.isdigit() for c in w)]
    return " ".join(words[:TITLE_TAG_WORDS])


def item_text(leaf: str | None, category: str | None) -> str:
    """Path text of an item: ``"<leaf> (<category>)"``, or whichever of the two exists ("" if none)."""
    leaf = _norm_space(leaf or "")
    category = _norm_space(category or "")
    if leaf and category and leaf.lower() != category.lower():
        return f"{leaf} ({category})"
    return leaf or category


def choose_text_source(path_texts: list[str], titles: list[str]) -> Literal["path", "title"]:
    """The item-text source ``item_text="auto"`` resolves to: ``"title"`` or ``"path"``.

    Titles when the path is coarse, i.e. at least ``COARSE_ITEMS_PER_PATH_TEXT`` (50) items per
    distinct path text, or a single path text (or none) for the whole catalogue, *and* at least
    ``MIN_DISTINCT_TITLE_SHARE`` (half) of the items have a distinct non-blank title; the path text
    otherwise. Why: a coarse path text (an aisle, "packaged vegetables fruits") is the same for
    hundreds of items, so the text model cannot tell them apart and a specific tag ("organic baby
    spinach") cannot find its item, while real titles can. A fine path (completejourney: product types
    as leaves, 23.9 items per text) already names the product and is cheaper to embed (3,863 texts
    against 17,434 distinct titles, which there are product type + size, 19% distinct), so it stays;
    the threshold leaves a 2x margin above it. MovieLens (genre paths, 64.5 movies per text, distinct
    titles) resolves to titles."""
    n = len(path_texts)
    distinct_paths = len({t for t in path_texts if t})
    coarse = distinct_paths <= 1 or n / distinct_paths >= COARSE_ITEMS_PER_PATH_TEXT
    distinct_titles = len({t for t in titles if t})
    return "title" if n and coarse and distinct_titles >= MIN_DISTINCT_TITLE_SHARE * n else "path"


def _codes(values: list[str | None]) -> tuple[np.ndarray, list[str]]:
    vocab = sorted({v for v in values if v})
    index = {v: i + 1 for i, v in enumerate(vocab)}
    return np.fromiter((index.get(v, 0) if v else 0 for v in values), dtype=np.int64, count=len(values)), vocab


@dataclass
class Catalogue:
    """The items a retriever indexes, in FAISS-id order, with their tower features."""

    item_ids: list[str]
    titles: list[str]
    categories: list[str]
    attr_codes: np.ndarray  # (n_items, n_attributes) int64, 0 = missing; columns in attr_sizes order
    attr_sizes: dict[str, int]  # attribute name -> vocabulary size incl. the missing code (ATTRIBUTES first)
    texts: list[str]  # distinct item texts
    text_index: np.ndarray  # (n_items,) int64 into ``texts``
    tags: list[list[str]]  # per item: [title tag,] fine bootstrap tag, coarse category tag, then LLM tags
    text_source: str = "path"  # what the item texts are: "path" or "title" ("auto" resolved)

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def category_codes(self) -> np.ndarray:
        return self.attr_codes[:, list(self.attr_sizes).index("category")]

    def code_map(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.item_ids)}


def build_catalogue(items: pl.DataFrame, *, text_source: str = "auto") -> Catalogue:
    """Features, texts and bootstrap tags of ``items`` (see the module docstring). ``text_source``:
    ``"auto"`` (:func:`choose_text_source`), ``"path"`` or ``"title"``. Raises :class:`DataError` for an
    empty catalogue or one without any title or category."""
    if text_source not in TEXT_SOURCES:
        raise ValueError(f"text_source must be one of {TEXT_SOURCES}, not {text_source!r}")
    if items.height == 0:
        raise DataError("the catalogue has no items to index")
    items = items.sort("item_id")
    paths = [[p.strip() for p in (cp or "").split(" > ") if p.strip()] for cp in items["category_path"].to_list()]
    cats = [c or "" for c in items["category"].fill_null("").to_list()]
    tops = [p[0] if p else None for p in paths]
    leaves = [p[-1] if p else None for p in paths]
    brands = items["brand"].to_list()
    prices = items["price"].to_numpy()
    price_codes = np.zeros(len(cats), dtype=np.int64)
    known = ~np.isnan(prices.astype(np.float64)) if len(prices) else np.zeros(0, bool)
    if known.any():
        edges = np.quantile(prices[known], np.linspace(0, 1, 11)[1:-1])
        price_codes[known] = np.searchsorted(edges, prices[known], side="right") + 1
    cols = {}
    sizes = {}
    for name, vals in (("top", tops), ("category", cats), ("leaf", leaves), ("brand", brands)):
        cols[name], vocab = _codes(vals)
        sizes[name] = len(vocab) + 1
    cols["price"] = price_codes
    sizes["price"] = 11
    free = [json.loads(a or "{}") for a in items["attributes"].to_list()]
    for key in free_attribute_keys(free, {"top": tops, "leaf": leaves, "category": cats}):
        cols[f"attr:{key}"], vocab = _codes([str(f[key]) if f.get(key) not in (None, "") else None for f in free])
        sizes[f"attr:{key}"] = len(vocab) + 1
    attr = np.stack([cols[a] for a in sizes], axis=1)
    titles = [_norm_space(t) for t in items["title"].fill_null("").to_list()]
    path_texts = [item_text(lf, c) for lf, c in zip(leaves, cats, strict=True)]
    if not any(titles) and not any(path_texts):
        raise DataError(f"the catalogue has no item text: all {len(titles)} items have an empty title, "
                        "category and category_path; fill at least the 'title' or 'category' column of the items")
    if text_source == "auto":
        text_source = choose_text_source(path_texts, titles)
    use_titles = text_source == "title"
    per_item = [(t if use_titles else "") or p or t or "unknown item" for t, p in zip(titles, path_texts, strict=True)]
    texts = sorted(set(per_item))
    tindex = {t: i for i, t in enumerate(texts)}
    text_idx = np.fromiter((tindex[t] for t in per_item), dtype=np.int64, count=len(per_item))
    tags = []
    for t, lf, c in zip(titles, leaves, cats, strict=True):
        ts = item_tags(lf, c)
        tt = title_tag(t) if (use_titles or not ts) else ""
        tags.append([tt, *(x for x in ts if x != tt)] if tt else ts)
    return Catalogue(item_ids=items["item_id"].to_list(), titles=titles, categories=cats, attr_codes=attr,
                     attr_sizes=sizes, texts=texts, text_index=text_idx, tags=tags, text_source=text_source)


def free_attribute_keys(free: list[dict], path_levels: dict[str, list[str | None]], *, max_keys: int = 4) -> list[str]:
    """Keys of the free-attribute JSON worth an embedding (see the module docstring)."""
    n = len(free)
    if n == 0:
        return []
    counts: dict[str, int] = {}
    for f in free:
        for k, v in f.items():
            if v not in (None, ""):
                counts[k] = counts.get(k, 0) + 1
    keys = []
    for k in sorted(counts):
        if counts[k] < 0.3 * n:
            continue
        vals = [str(f[k]) for f in free if f.get(k) not in (None, "")]
        distinct = len(set(vals))
        if not 2 <= distinct <= max(2, int(0.5 * n)):
            continue
        lower = [str(f.get(k) or "").lower() for f in free]
        if any(sum(a == (b or "").lower() for a, b in zip(lower, lv, strict=True)) > 0.9 * counts[k]
               for lv in path_levels.values()):
            continue  # a copy of the category path (e.g. department, product_type)
        keys.append(k)
    return keys[:max_keys]


def load_llm_tag_pairs(path: str | Path) -> list[tuple[str, str]]:
    """Read (tag, item_id) pairs from a JSONL file of objects with ``tag`` and ``item_id`` keys."""
    path = Path(path)
    if not path.exists():
        raise DataError("LLM tag file not found", file=str(path))
    pairs: list[tuple[str, str]] = []
    with path.open(encoding="utf-8") as f:
        for row, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                tag, item = _norm_space(str(obj["tag"]).lower()), str(obj["item_id"]).strip()
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"expected a JSON object with 'tag' and 'item_id' ({e})", file=str(path), row=row) from None
            if tag and item:
                pairs.append((tag, item))
    return pairs


def add_tag_pairs(catalogue: Catalogue, pairs: list[tuple[str, str]]) -> int:
    """Attach LLM tags to catalogue items; returns how many pairs named an item in the catalogue."""
    codes = catalogue.code_map()
    used = 0
    for tag, item in pairs:
        c = codes.get(item)
        if c is None:
            continue
        if tag not in catalogue.tags[c]:
            catalogue.tags[c].append(tag)
        used += 1
    return used


def recent_category_tags(dataset: Dataset, user_id: str, *, before: datetime | None = None, n: int = 10,
                         level: str = "category") -> list[str]:
    """Bootstrap tags of the user's ``n`` most recent distinct categories (newest first).

    ``level="category"`` gives category tags ("cold cereal"); ``level="leaf"`` the fine tags of the
    most recent category-path leaves. This is the tag source for the "tag only" evaluation variant and
    a fallback for the graph until LLM tags exist. Returns [] for an unknown user or an empty history."""
    try:
        h = dataset.history_with_items(user_id, before=before)
    except (UnknownUserError, EmptyHistoryError):
        return []
    return recent_tags_from_history(h, n=n, level=level)


def recent_tags_from_history(h: pl.DataFrame, *, n: int = 10, level: str = "category") -> list[str]:
    """Same as :func:`recent_category_tags` for a history (sorted by time) joined with item columns."""
    if level not in ("category", "leaf"):
        raise ValueError(f"level must be 'category' or 'leaf', not {level!r}")
    out: list[str] = []
    seen: set[str] = set()
    for cp, cat in zip(reversed(h["category_path"].to_list()), reversed(h["category"].to_list()), strict=True):
        if level == "category":
            tag = category_tag(cat)
        else:
            parts = [p.strip() for p in (cp or "").split(" > ") if p.strip()]
            tag = bootstrap_tag(parts[-1] if parts else None, cat)
        if tag and tag not in seen:
            seen.add(tag)
            out.append(tag)
            if len(out) >= n:
                break
    return out
