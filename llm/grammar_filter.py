"""Grammar-constrained sampling that checks the likely tokens first (llama.cpp's own trick).

llama-cpp-python puts the grammar sampler on the whole vocabulary before top-k, so every generated
token is matched against the grammar 49k times (SmolLM2's vocabulary). With a large grammar, such as
the expert's enum of catalogue product types, that matching is most of the decode time.

:class:`GrammarFilter` is a ``logits_processor`` that does what llama.cpp's ``common_sampler`` does:
it applies the grammar to the ``shortlist`` highest logits only, and to the whole vocabulary only
when none of those is allowed. Every token it lets through is one the grammar allows, so the output
still always parses; the distribution differs from the full check only in tokens outside the
shortlist, which top-k (40) and top-p would cut anyway. The grammar's state is advanced with each
token the model actually sampled (read back from the context's token list on the next call).

One filter per generation: it owns a llama.cpp grammar sampler and frees it in :meth:`close`.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

_TOKEN_DTYPE = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)


class GrammarFilter:
    def __init__(self, llama: Any, grammar: Any, *, shortlist: int = 64):
        import llama_cpp

        self._lib = llama_cpp
        self._sampler = llama_cpp.llama_sampler_init_grammar(
            llama._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8"))
        if not self._sampler:
            raise ValueError("llama.cpp rejected the grammar")
        self.shortlist = shortlist
        self._seen: int | None = None  # tokens in the context when this filter was first called
        self.full_checks = 0  # tokens for which the shortlist held nothing the grammar allows
        self.tokens = 0

    def _apply(self, ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """The logits of ``ids`` after the grammar (``-inf`` where it forbids the token)."""
        buf = np.empty(len(ids), dtype=_TOKEN_DTYPE)
        buf["id"], buf["logit"], buf["p"] = ids, logits, 0.0
        arr = self._lib.llama_token_data_array(
            data=buf.ctypes.data_as(self._lib.llama_token_data_p), size=len(ids), selected=-1, sorted=False)
        self._lib.llama_sampler_apply(self._sampler, ctypes.byref(arr))
        return buf["logit"].copy()

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        n = len(input_ids)
        if self._seen is None:
            self._seen = n
        for tok in input_ids[self._seen:n]:  # what was sampled since the last call
            self._lib.llama_sampler_accept(self._sampler, int(tok))
        self._seen = n
        self.tokens += 1
        k = min(self.shortlist, len(scores))
        top = np.argpartition(scores, -k)[-k:]
        kept = self._apply(top.astype(np.intc), scores[top])
        out = np.full_like(scores, -np.inf)
        if np.isfinite(kept).any():
            out[top] = kept
            return out
        self.full_checks += 1
        return self._apply(np.arange(len(scores), dtype=np.intc), scores)

    def close(self) -> None:
        if self._sampler:
            self._lib.llama_sampler_free(self._sampler)
            self._sampler = None
