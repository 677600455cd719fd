"""What loading does with rows it cannot use as they are. Each choice is counted in the LoadReport."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from behavior.schema import DEFAULT_WEIGHTS, TYPE_ALIASES

MissingItemPolicy = Literal["placeholder", "drop", "fail"]
UnknownTypePolicy = Literal["map", "drop", "fail"]
#: how a timestamp column is read; ``auto`` detects it once per column (``parse_timestamps``)
TimestampUnit = Literal["auto", "iso", "s", "ms", "us"]


@dataclass(frozen=True)
class LoadPolicies:
    #: a behaviour whose item is not in the catalogue: keep with placeholder text, drop (counted), or fail
    missing_item: MissingItemPolicy = "drop"
    #: a behaviour type outside the canonical set. Names in ``type_map`` (the documented aliases such
    #: as ``buy``) are always mapped; the policy decides the rest: drop them, counted ("map", "drop"),
    #: or fail on the first one
    unknown_type: UnknownTypePolicy = "map"
    type_map: dict[str, str] = field(default_factory=lambda: dict(TYPE_ALIASES))
    #: the unit of every timestamp column (see ``TimestampUnit``)
    timestamp_unit: TimestampUnit = "auto"
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
