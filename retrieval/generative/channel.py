"""``GenerativeChannel``: RankGR as an extra retrieval channel over a built ``Retriever``.

Like ``retrieval.interests.InterestChannel`` it binds a model to the retriever's catalogue texts and
returns a ``SearchResult``; its candidates say ``channel="generative"`` and ``sources=["generative"]``
(a ``Candidate`` subclass, since the service's literal types do not name this channel)."""

from __future__ import annotations

from datetime import datetime

import polars as pl
from pydantic import Field

from retrieval.errors import RetrievalInputError
from retrieval.generative.data import Sequences
from retrieval.generative.recommend import decode, final_scores
from retrieval.generative.train import RankGR
from retrieval.service import Candidate, SearchResult


class GenerativeCandidate(Candidate):
    sources: list[str] = Field(default_factory=lambda: ["generative"])
    channel: str = "generative"
    log_prob: float | None = Field(None, description="NTP log-probability of the item's semantic ID")


class GenerativeChannel:
    """``behaviors`` are the rows the histories come from (only those before ``as_of`` are read)."""

    def __init__(self, retriever, model: RankGR, behaviors: pl.DataFrame, as_of: datetime,
                 target_behaviors: tuple[str, ...] = ("purchase",)):
        self.r, self.model = retriever, model
        rows = behaviors.filter(pl.col("ts") < as_of)
        self.seqs = Sequences.build(rows, model.vocab, as_of, target_behaviors, model.config.seed)
        self._users = self.seqs.user_index()
        self._code = {s: i for i, s in enumerate(retriever.item_ids)}

    def search(self, user_id: str, k: int, *, exclude_items: set[str] | None = None) -> SearchResult:
        if k < 1:
            raise RetrievalInputError(f"k must be >= 1, got {k}")
        known = user_id in self._users
        dec = decode(self.model, self.seqs, [user_id], batch=1)
        scores = final_scores(self.model, dec)[0]
        excl = exclude_items or set()
        cands = []
        for j in sorted(range(len(scores)), key=lambda j: -scores[j]):
            c = int(dec.codes[0, j])
            item = self.model.vocab.item_ids[c] if c >= 0 else None
            if item is None or item in excl:
                continue
            pos = self._code.get(item)
            cands.append(GenerativeCandidate(
                item_id=item, title=self.r.titles[pos] if pos is not None else "",
                category=self.r.categories[pos] if pos is not None else "", score=float(scores[j]),
                log_prob=float(dec.log_probs[0, j])))
            if len(cands) == k:
                break
        flags = ([] if known else ["unknown_user"]) + ([] if len(cands) >= k else [f"short_result:{len(cands)}"])
        return SearchResult(candidates=cands, user_known=known, flags=flags)
