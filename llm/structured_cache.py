"""Structured-output runnables kept per model, so a call does not rebuild its chain.

``model.with_structured_output(Schema, include_raw=True)`` builds a new chain on every call: a bound
model, a parser and their ``RunnableSequence`` (and, for the local backend, the schema's JSON form and
its grammar check). The graph asks each model for the same few schemas thousands of times, so the
project's chat models (scripted, local, OpenAI-compatible) keep the chains they built in a
:class:`StructuredRunnables`, at most ``STRUCTURED_CACHE_SIZE`` schemas, the oldest dropped first (the
expert's schema differs per catalogue, so the set of schemas is not bounded). A chain holds no call
state: the same one serves every thread. Any other LangChain model is asked each time, as before.
"""

from __future__ import annotations

import threading
from typing import Any

#: schemas whose structured-output chain one model keeps
STRUCTURED_CACHE_SIZE = 32


class StructuredRunnables:
    """One model's structured-output chains by schema (``include_raw=True``), oldest dropped first."""

    def __init__(self, size: int = STRUCTURED_CACHE_SIZE):
        self.size = size
        self._chains: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._chains)

    def get(self, model: Any, schema: Any) -> Any:
        chain = self._chains.get(schema)
        if chain is None:
            chain = model.with_structured_output(schema, include_raw=True)  # may raise: nothing is kept
            with self._lock:
                while len(self._chains) >= self.size:
                    self._chains.pop(next(iter(self._chains)))
                self._chains[schema] = chain
        return chain


def structured_runnable_for(model: Any, schema: Any) -> Any:
    """``model.with_structured_output(schema, include_raw=True)``, kept by the model when it has a
    :class:`StructuredRunnables` (``_structured_chains``)."""
    chains = getattr(model, "_structured_chains", None)
    if isinstance(chains, StructuredRunnables):
        return chains.get(model, schema)
    return model.with_structured_output(schema, include_raw=True)


__all__ = ["STRUCTURED_CACHE_SIZE", "StructuredRunnables", "structured_runnable_for"]
