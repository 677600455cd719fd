"""The data schema every adapter produces and every other package reads.

Records (pydantic) describe one row; tables (polars) hold a whole dataset.

Ids are opaque strings everywhere outside the towers and FAISS: SKUs like ``85123A`` are normal.
``Dataset.item_codes`` / ``Dataset.user_codes`` map them to dense integers (for embeddings and
FAISS ids) and back.

Behaviour types are an open vocabulary with a canonical core (``CANONICAL_TYPES``); each type has a
confidence weight (``DEFAULT_WEIGHTS``) used by compression and by the towers.

Table columns (all ids ``Utf8``):

=============  =====================================================================================
table          columns
=============  =====================================================================================
items          item_id, title, category, category_path, brand (null), price (Float64, null),
               attributes (Utf8 JSON object of free attributes)
users          user_id, attributes (Utf8 JSON object)
behaviors      user_id, item_id, behavior (canonical name), ts (Datetime[us]), query (Utf8, null),
               value (Float64, null: quantity, rating, ...)
reference_tags user_id, item_id, tag, ts   (optional; human-written tags, e.g. MovieLens)
=============  =====================================================================================

``category`` is the leaf category used for diversity metrics and HR@K (on completejourney,
``product_category``); ``category_path`` is the full path joined by `` > ``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, Field, field_validator

from core.errors import EmptyHistoryError, UnknownUserError


class BehaviorType(StrEnum):
    VIEW = "view"
    CLICK = "click"
    FAVORITE = "favorite"
    CART = "cart"
    PURCHASE = "purchase"
    SEARCH = "search"
    REVIEW = "review"


CANONICAL_TYPES: tuple[str, ...] = tuple(t.value for t in BehaviorType)

#: Confidence per behaviour type: how strongly the event says "the user wants this".
DEFAULT_WEIGHTS: dict[str, float] = {
    "purchase": 1.0,
    "cart": 0.8,
    "favorite": 0.7,
    "review": 0.7,
    "search": 0.6,
    "view": 0.3,
    "click": 0.2,
}

#: Common aliases mapped onto the canonical set (used by the ``map`` unknown-type policy).
TYPE_ALIASES: dict[str, str] = {
    "pv": "view",
    "page_view": "view",
    "detail": "view",
    "fav": "favorite",
    "favourite": "favorite",
    "like": "favorite",
    "buy": "purchase",
    "order": "purchase",
    "add_to_cart": "cart",
    "addtocart": "cart",
    "query": "search",
    "rating": "review",
    "rate": "review",
}


class Item(BaseModel):
    item_id: str = Field(min_length=1)
    title: str = ""
    category: str = ""
    category_path: list[str] = Field(default_factory=list)
    brand: str | None = None
    price: float | None = None
    attributes: dict[str, str] = Field(default_factory=dict)

    @field_validator("item_id")
    @classmethod
    def _strip(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("empty item_id")
        return v


class User(BaseModel):
    user_id: str = Field(min_length=1)
    attributes: dict[str, str] = Field(default_factory=dict)


class Behavior(BaseModel):
    user_id: str = Field(min_length=1)
    item_id: str = Field(min_length=1)
    behavior: str
    ts: datetime
    query: str | None = None
    value: float | None = None


ITEM_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.Utf8,
    "title": pl.Utf8,
    "category": pl.Utf8,
    "category_path": pl.Utf8,
    "brand": pl.Utf8,
    "price": pl.Float64,
    "attributes": pl.Utf8,
}
USER_SCHEMA: dict[str, pl.DataType] = {"user_id": pl.Utf8, "attributes": pl.Utf8}
BEHAVIOR_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.Utf8,
    "item_id": pl.Utf8,
    "behavior": pl.Utf8,
    "ts": pl.Datetime("us"),
    "query": pl.Utf8,
    "value": pl.Float64,
}
TAG_SCHEMA: dict[str, pl.DataType] = {"user_id": pl.Utf8, "item_id": pl.Utf8, "tag": pl.Utf8, "ts": pl.Datetime("us")}


@dataclass
class LoadReport:
    """What an adapter did to the raw rows: counts of dropped, mapped and placeholder rows, by reason."""

    rows_read: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    mapped_types: dict[str, str] = field(default_factory=dict)
    placeholders: int = 0
    notes: list[str] = field(default_factory=list)
    #: rows whose text was cut to its load-time cap, by field (``behavior/limits.py``)
    truncated: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, n: int = 1) -> None:
        if n:
            self.dropped[reason] = self.dropped.get(reason, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows_read": self.rows_read,
            "dropped": dict(self.dropped),
            "dropped_total": sum(self.dropped.values()),
            "mapped_types": dict(self.mapped_types),
            "placeholder_items": self.placeholders,
            "truncated": dict(self.truncated),
            "notes": list(self.notes),
        }


class IdCodes:
    """Opaque string id <-> dense int64 code. Codes follow the order ids were given (sorted by adapters)."""

    def __init__(self, ids: list[str]):
        self.ids: list[str] = list(ids)
        self._code = {s: i for i, s in enumerate(self.ids)}
        if len(self._code) != len(self.ids):
            raise ValueError("duplicate ids")

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, s: object) -> bool:
        return s in self._code

    def code(self, s: str) -> int:
        return self._code[s]

    def get(self, s: str, default: int = -1) -> int:
        return self._code.get(s, default)

    def codes(self, ids) -> np.ndarray:
        return np.fromiter((self._code[s] for s in ids), dtype=np.int64)

    def id(self, code: int) -> str:
        return self.ids[int(code)]


@dataclass
class Dataset:
    """One loaded dataset: polars tables in the columns documented above, plus what loading did."""

    name: str
    items: pl.DataFrame
    users: pl.DataFrame
    behaviors: pl.DataFrame
    reference_tags: pl.DataFrame | None = None
    report: LoadReport = field(default_factory=LoadReport)
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))

    def __post_init__(self) -> None:
        self.items = self.items.sort("item_id")
        self.users = self.users.sort("user_id")
        self._item_codes: IdCodes | None = None
        self._user_codes: IdCodes | None = None
        self._by_user: dict[str, pl.DataFrame] | None = None

    # ----- id maps -------------------------------------------------------------------------------
    @property
    def item_codes(self) -> IdCodes:
        if self._item_codes is None:
            self._item_codes = IdCodes(self.items["item_id"].to_list())
        return self._item_codes

    @property
    def user_codes(self) -> IdCodes:
        if self._user_codes is None:
            self._user_codes = IdCodes(self.users["user_id"].to_list())
        return self._user_codes

    # ----- look-ups ------------------------------------------------------------------------------
    def has_user(self, user_id: str) -> bool:
        return user_id in self.user_codes

    def item(self, item_id: str) -> Item:
        row = self.items.filter(pl.col("item_id") == item_id)
        if row.height == 0:
            raise KeyError(f"unknown item {item_id!r}")
        r = row.row(0, named=True)
        return Item(
            item_id=r["item_id"],
            title=r["title"] or "",
            category=r["category"] or "",
            category_path=[p for p in (r["category_path"] or "").split(" > ") if p],
            brand=r["brand"],
            price=r["price"],
            attributes=json.loads(r["attributes"] or "{}"),
        )

    def user(self, user_id: str) -> User:
        if not self.has_user(user_id):
            raise UnknownUserError(user_id, self.name)
        r = self.users.row(self.user_codes.code(user_id), named=True)
        return User(user_id=r["user_id"], attributes=json.loads(r["attributes"] or "{}"))

    def history(self, user_id: str, *, before: datetime | None = None) -> pl.DataFrame:
        """The user's behaviours (sorted by time), optionally only those strictly before ``before``.

        Raises UnknownUserError for an id not in ``users`` and EmptyHistoryError for a user with no
        behaviour (in the window)."""
        if not self.has_user(user_id):
            raise UnknownUserError(user_id, self.name)
        if self._by_user is None:
            self._by_user = {
                k[0]: v for k, v in self.behaviors.sort("ts").partition_by("user_id", as_dict=True).items()
            }
        h = self._by_user.get(user_id)
        if h is None or h.height == 0:
            raise EmptyHistoryError(user_id)
        if before is not None:
            h = h.filter(pl.col("ts") < before)
            if h.height == 0:
                raise EmptyHistoryError(user_id, f"no behaviour before {before:%Y-%m-%d}")
        return h

    def history_with_items(self, user_id: str, *, before: datetime | None = None) -> pl.DataFrame:
        """History joined with item columns (title, category, category_path, brand, price)."""
        return self.history(user_id, before=before).join(self.items, on="item_id", how="left")
