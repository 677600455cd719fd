"""Agreement between two graders: the graph's judge and a replayed judge, or a judge and people.

* Per dimension (``tag.relevance``, ``explanation.factuality``, ...): the share of subjects on which
  both give the same outcome (``good`` / ``ok`` / ``defect``), and Cohen's kappa.
* On the grade (S / A / B): agreement, Cohen's kappa and the confusion table.

Cohen's kappa: ``κ = (p_o − p_e) / (1 − p_e)`` with ``p_o`` the observed share of agreement and
``p_e = Σ_k p_a(k)·p_b(k)`` the agreement expected by chance from each grader's own label shares.
When both graders use one and the same label for everything, ``p_e = 1`` and κ is undefined; we
report 1.0 there (they agree completely), and ``None`` when there are no pairs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

GRADES = ("S", "A", "B")


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    if len(a) != len(b):
        raise ValueError(f"kappa needs paired labels: {len(a)} vs {len(b)}")
    n = len(a)
    if n == 0:
        return None
    p_o = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[k] * cb[k] for k in set(ca) | set(cb)) / (n * n)
    if p_e >= 1.0:
        return 1.0 if p_o >= 1.0 else 0.0
    return (p_o - p_e) / (1.0 - p_e)


def _summary(a: list[str], b: list[str]) -> dict[str, Any]:
    n = len(a)
    agree = sum(x == y for x, y in zip(a, b, strict=True))
    k = cohen_kappa(a, b)
    return {"n": n, "agreement": round(agree / n, 4) if n else None, "kappa": None if k is None else round(k, 4)}


def confusion(a: Iterable[str], b: Iterable[str]) -> dict[str, dict[str, int]]:
    """``{label of a: {label of b: count}}``."""
    out: dict[str, dict[str, int]] = {}
    for x, y in zip(a, b, strict=True):
        out.setdefault(x, {}).setdefault(y, 0)
        out[x][y] += 1
    return out


def outcomes(verdict: dict[str, Any]) -> dict[str, str]:
    """``{dimension: outcome}`` of a verdict dict (as stored in the run log)."""
    return {d["dimension"]: d["outcome"] for d in verdict.get("dimensions") or []}


def compare_verdicts(pairs: Iterable[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """Agreement between reference and other verdicts, paired by subject: on the grade and per
    ``kind.dimension``."""
    ga: list[str] = []
    gb: list[str] = []
    dims: dict[str, tuple[list[str], list[str]]] = {}
    for ref, other in pairs:
        ga.append(ref["grade"])
        gb.append(other["grade"])
        oa, ob = outcomes(ref), outcomes(other)
        for d in oa.keys() & ob.keys():
            la, lb = dims.setdefault(f"{ref.get('kind', '?')}.{d}", ([], []))
            la.append(oa[d])
            lb.append(ob[d])
    return {"grade": {**_summary(ga, gb), "confusion": confusion(ga, gb)},
            "dimensions": {k: _summary(*v) for k, v in sorted(dims.items())}}


def compare_labels(labels: Iterable[dict[str, Any]], verdict_for: Any) -> dict[str, Any]:
    """Judge vs people. ``labels``: rows (run_id, pass_no, subject_id, dimension, value) with
    dimension ``grade`` or a dimension name; ``verdict_for(run_id, pass_no, subject_id)`` gives the
    judge's verdict dict (or None). Agreement and kappa on the grade and per ``kind.dimension``
    (judge first, person second)."""
    per: dict[str, tuple[list[str], list[str]]] = {}
    missing = 0
    for lab in labels:
        v = verdict_for(lab["run_id"], lab["pass_no"], lab["subject_id"])
        if v is None:
            missing += 1
            continue
        if lab["dimension"] == "grade":
            key, judged = "grade", v.get("grade")
        else:
            key, judged = f"{v.get('kind', '?')}.{lab['dimension']}", outcomes(v).get(lab["dimension"])
        if judged is None:
            missing += 1
            continue
        a, b = per.setdefault(key, ([], []))
        a.append(judged)
        b.append(lab["value"])
    grade = per.pop("grade", ([], []))
    return {"grade": {**_summary(*grade), "confusion": confusion(*grade)},
            "dimensions": {k: _summary(*v) for k, v in sorted(per.items())}, "unmatched_labels": missing}
