"""What loading does with rows it cannot use as they are. Each choice is counted in the LoadReport."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from behavior.schema import DEFAULT_WEIGHTS, TYPE_ALIASES

MissingItemPolicy = Literal["placeholder", "drop", "fail"]
UnknownTypePolicy = Literal["map", "drop", "fail"]


@dataclass(frozen=True)
class LoadPolicies:
    #: a behaviour whose item is not in the catalogue: keep with placeholder text, drop (counted), or fail
    missing_item: MissingItemPolicy = "drop"
    #: a behaviour type outside the canonical set: map via ``type_map`` (unmapped ones are dropped and
    #: counted), drop (counted), or fail
    unknown_type: UnknownTypePolicy = "map"
    type_map: dict[str, str] = field(default_factory=lambda: dict(TYPE_ALIASES))
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
