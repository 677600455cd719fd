"""The senior reviewer: dimension verdicts in, one S/A/B :class:`~judges.schemas.Verdict` out.

* :func:`combine` merges the rule verdicts and the LLM verdicts of one subject in the canonical
  dimension order. A rule verdict wins over the model's for the same dimension. A dimension nobody
  decided (a bug upstream, or an evaluator that never reported) becomes a fail-closed ``defect``.
* :func:`grade` is RecGPT-V2's rule: any ``defect`` gives **B**; otherwise the share of ``good``
  dimensions decides: at or above ``threshold`` gives **S**, below gives **A**. ``ok`` counts as
  acceptable but not positive.
* :func:`build_feedback` turns the defects into a short "what to fix" text for the bounded
  regeneration (at most :data:`MAX_FEEDBACK_CHARS`, since generator prompts cap it anyway). S and A
  verdicts carry no feedback.

Everything here is a pure function, so logged dimension verdicts can be re-graded with another
threshold without calling any model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from judges.schemas import DimensionVerdict, Grade, JudgeRequest, Verdict, dimensions_for

MAX_FEEDBACK_CHARS = 400
NOT_EVALUATED = "not evaluated: no rule decided it and no judge answer arrived"


def combine(kind: str, rule_verdicts: Mapping[str, DimensionVerdict],
            llm_verdicts: Mapping[str, DimensionVerdict]) -> list[DimensionVerdict]:
    """One verdict per dimension of ``kind``, rules first, in canonical order."""
    out = []
    for d in dimensions_for(kind):  # type: ignore[arg-type]
        v = rule_verdicts.get(d) or llm_verdicts.get(d)
        if v is None:
            v = DimensionVerdict(dimension=d, outcome="defect", reason=NOT_EVALUATED, source="llm", fallback=True)
        out.append(v)
    return out


def share_good(dims: Sequence[DimensionVerdict]) -> float:
    return sum(d.outcome == "good" for d in dims) / len(dims) if dims else 0.0


def grade(dims: Sequence[DimensionVerdict], threshold: float) -> Grade:
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"judge S threshold must be within [0, 1], got {threshold}")
    if not dims or any(d.outcome == "defect" for d in dims):
        return "B"
    return "S" if share_good(dims) >= threshold else "A"


def _short(text: str, n: int = 60) -> str:
    t = " ".join(text.split())
    return t if len(t) <= n else t[: n - 1] + "…"


def build_feedback(req: JudgeRequest, dims: Iterable[DimensionVerdict]) -> str:
    """What to fix, from the defects: ``tag "organic stuff" was graded B. Fix: specificity: ...``."""
    defects = [d for d in dims if d.outcome == "defect"]
    if not defects:
        return ""
    judged = [d for d in defects if not d.fallback]
    unjudged = [d.dimension for d in defects if d.fallback]
    parts = [f"{d.dimension}: {d.reason or 'defect'}" for d in judged]
    if unjudged:
        parts.append(f"the judge could not grade {', '.join(unjudged)}; write a simpler, clearer {req.kind}")
    text = f"{req.kind} \"{_short(req.text)}\" was graded B. Fix: " + "; ".join(parts)
    return text if len(text) <= MAX_FEEDBACK_CHARS else text[: MAX_FEEDBACK_CHARS - 1] + "…"


def review(req: JudgeRequest, dims: Sequence[DimensionVerdict], *, threshold: float, judge_model: str = "",
           mode: str = "joint") -> Verdict:
    """Grade one subject from its (combined) dimension verdicts."""
    g = grade(dims, threshold)
    return Verdict(subject_id=req.subject_id, kind=req.kind, grade=g, dimensions=list(dims),
                   feedback=build_feedback(req, dims) if g == "B" else "", judge_model=judge_model,
                   mode=mode)  # type: ignore[arg-type]
