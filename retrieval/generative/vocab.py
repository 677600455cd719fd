"""Semantic IDs as tokens: one token range per SID level (per-level offsets), plus PAD and BOS."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from retrieval.generative.vectors import ItemVectors
from retrieval.hisac import SemanticIds

PAD, BOS = 0, 1
N_SPECIAL = 2


class SidVocab:
    """Items (codes ``0..n-1`` = rows of ``item_ids``) with their full SIDs and token ids.

    ``sids.codes`` has one column per RQ level plus the dedup digit; level ``l`` digit ``c`` is token
    ``offsets[l] + c``. ``item_tokens[code]`` is the item's token sequence (``depth`` tokens)."""

    def __init__(self, item_ids: Sequence[str], sids: SemanticIds):
        if len(item_ids) != sids.n_items:
            raise ValueError(f"{len(item_ids)} item ids for {sids.n_items} semantic IDs")
        self.item_ids = list(item_ids)
        self.code = {s: i for i, s in enumerate(self.item_ids)}
        self.sids = sids
        codes = sids.codes
        self.depth = int(codes.shape[1])
        self.sizes = [int(k) for k in sids.levels] + [int(codes[:, -1].max()) + 1]
        self.offsets = np.cumsum([N_SPECIAL] + self.sizes[:-1]).astype(np.int64)
        self.size = int(N_SPECIAL + sum(self.sizes))
        self.item_tokens = codes + self.offsets[None, :]
        self.token_level = np.full(self.size, -1, np.int64)
        for level, (off, k) in enumerate(zip(self.offsets.tolist(), self.sizes, strict=True)):
            self.token_level[off:off + k] = level

    @classmethod
    def build(cls, vectors: ItemVectors, levels: Sequence[int], seed: int = 42) -> SidVocab:
        return cls(vectors.item_ids, SemanticIds.build(vectors.vecs, levels=levels, seed=seed))

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def tokens_of(self, code: int) -> tuple[int, ...]:
        return tuple(int(t) for t in self.item_tokens[code])

    def digits_of_tokens(self, tokens: Sequence[int]) -> tuple[int, ...]:
        if len(tokens) != self.depth:
            raise ValueError(f"an SID has {self.depth} tokens, got {len(tokens)}")
        return tuple(int(t) - int(self.offsets[lv]) for lv, t in enumerate(tokens))

    def item_of_tokens(self, tokens: Sequence[int]) -> int:
        """The item code of a full token sequence (``KeyError`` for an invalid SID)."""
        return self.sids.item_of(self.digits_of_tokens(tokens))
