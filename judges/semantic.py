"""Semantic evaluators: embedding similarity (all-MiniLM-L6-v2) for the dimensions a small judge
model cannot grade.

Why: the embedded default LLM (SmolLM2-135M) does not discriminate as a judge. Probed on four
explanations (one correct, one hallucinated, one off-topic, one copied from the prompt's example),
it answered the joint judge schema identically for all four ("good" for the first field, "defect"
for every other), so an LLM-graded run dropped everything, good or bad. The ``semantic`` judge
profile (``Context.judge_profile``) therefore grades with rules plus these evaluators, and marks the
remaining dimensions ``ok`` when every rule passed; the ``llm`` profile (the paper's design, for a
capable served model) asks the LLM as before.

The thresholds are calibrated on the labelled set ``tests/data/semantic_labels.jsonl`` (hand-labelled
tag/intent and explanation/item pairs, the demo's real failures among them), which
``tests/test_judges_semantic.py`` scores with the real encoder: a threshold must separate it, so a
relevance near 0.10 (near-random text, which used to pass as "ok") is a defect. For tags, validity is
the similarity to the nearest catalogue phrase (product types and categories): a real product type
scores ≈1.0, junk like "intent" or "miscellany" stays far below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from judges.schemas import DimensionVerdict, JudgeRequest, Outcome


@dataclass(frozen=True)
class Thresholds:
    good: float
    ok: float

    def outcome(self, score: float) -> Outcome:
        return "good" if score >= self.good else "ok" if score >= self.ok else "defect"


EXPLANATION_GROUNDING = Thresholds(good=0.45, ok=0.35)
TAG_VALIDITY = Thresholds(good=0.70, ok=0.50)
TAG_RELEVANCE = Thresholds(good=0.30, ok=0.21)


class SemanticJudge:
    """``evaluate(request) -> {dimension: DimensionVerdict}`` with ``source="semantic"``.

    ``encoder`` needs ``encode(list[str]) -> np.ndarray`` of L2-normalised rows (``TextEncoder``).
    ``vocabulary`` is the catalogue's phrases (product types, categories) used for tag validity."""

    def __init__(self, encoder, vocabulary: Sequence[str]):
        self.encoder = encoder
        self.vocabulary = sorted({v.strip().lower() for v in vocabulary if v and v.strip()})
        self._vocab_vecs: np.ndarray | None = None

    def _vocab(self) -> np.ndarray:
        if self._vocab_vecs is None:
            enc = getattr(self.encoder, "encode_cached", self.encoder.encode)
            self._vocab_vecs = np.asarray(enc(self.vocabulary), dtype=np.float32)
        return self._vocab_vecs

    def _sim(self, a: str, b: str) -> float:
        va, vb = self.encoder.encode([a, b])
        return float(va @ vb)

    @staticmethod
    def _ref(req: JudgeRequest) -> str:
        """What the request's text is compared with: the item (explanations), intent and evidence (tags)."""
        if req.kind == "explanation":
            return f"{req.item.title}; {req.item.category}" if req.item else req.intent
        return " ".join(x for x in (req.intent, req.evidence) if x)

    def prime(self, requests: Sequence[JudgeRequest]) -> None:
        """Embed every text that :meth:`evaluate` will need for ``requests`` in one batched encoder call
        (the encoder's memory cache then serves each request), instead of a small call per request."""
        texts = [t for r in requests for t in (self._ref(r), r.text, r.text.lower()) if t]
        if texts:
            self.encoder.encode(list(dict.fromkeys(texts)))

    def evaluate(self, req: JudgeRequest) -> dict[str, DimensionVerdict]:
        if req.kind == "explanation":
            s = self._sim(self._ref(req), req.text)
            return {"relevance": _verdict("relevance", EXPLANATION_GROUNDING, s, f"similarity to the item {s:.2f}")}
        out = {}
        vocab = self._vocab()
        tv = self.encoder.encode([req.text.lower()])[0]
        best = int(np.argmax(vocab @ tv)) if len(vocab) else -1
        s_valid = float(vocab[best] @ tv) if best >= 0 else 0.0
        near = self.vocabulary[best] if best >= 0 else ""
        out["validity"] = _verdict("validity", TAG_VALIDITY, s_valid,
                                   f"nearest catalogue phrase {near!r} at {s_valid:.2f}")
        ref = self._ref(req)
        if ref:
            s_rel = self._sim(ref, req.text)
            out["relevance"] = _verdict("relevance", TAG_RELEVANCE, s_rel, f"similarity to intent/evidence {s_rel:.2f}")
        return out


def _verdict(dim: str, th: Thresholds, score: float, reason: str) -> DimensionVerdict:
    return DimensionVerdict(dimension=dim, outcome=th.outcome(score), reason=reason, source="semantic")


def catalogue_vocabulary(dataset) -> list[str]:
    """Distinct product-type and category phrases of a dataset's catalogue."""
    import json

    import polars as pl

    cats = dataset.items["category"].drop_nulls().unique().to_list()
    types = (dataset.items["attributes"].drop_nulls()
             .map_elements(lambda a: json.loads(a).get("product_type", ""), return_dtype=pl.Utf8)
             .unique().to_list())
    return [t for t in {*cats, *types} if t]
