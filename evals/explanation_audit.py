"""Degenerate-text audit over logged runs (``app.py eval explanations``): of the explanations that
were *shown* (emitted recommendations), how many repeat a 4-gram, run over the length limit, hold
more than one sentence or copy four words of the explainer prompts' own examples, next to the
judge's pass rates for every tag and explanation it graded in those runs.

The checks are the judge's own rule functions (``judges.rules``) applied to what reached the user,
so a nonzero count means something degenerate got past the judge. It reads the run log only; the
runs can come from a batch (``--batch``), a demo or any ``--run`` ids.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from judges.rules import (
    COPY_NGRAM,
    MAX_EXPLANATION_CHARS,
    MAX_EXPLANATION_WORDS,
    copied_phrase,
    repeated_ngram,
    sentence_count,
    words,
)

#: the prompts whose example text an explanation must not copy
EXPLAINER_PROMPTS = ("explainer", "explainer_style")


def defects_of(text: str, *, prompt_texts: list[str], allowed: str = "") -> list[str]:
    """The audit's defects for one shown explanation (empty: clean)."""
    out = []
    if repeated_ngram(text, 4):
        out.append("repeated_4gram")
    if len(words(text)) > MAX_EXPLANATION_WORDS or len(text) > MAX_EXPLANATION_CHARS:
        out.append("over_limit")
    if sentence_count(text) > 1:
        out.append("more_than_one_sentence")
    if copied_phrase(text, prompt_texts, allowed=allowed, n=max(COPY_NGRAM, 4)):
        out.append("copies_prompt_example")
    return out


def audit_runs(store: Any, run_ids: list[str], prompt_texts: list[str]) -> dict[str, Any]:
    shown, bad, by_defect, by_source = 0, [], Counter(), Counter()
    graded: dict[str, Counter] = {"tag": Counter(), "explanation": Counter()}
    for rid in run_ids:
        for r in store.recommendations(rid):
            shown += 1
            by_source[r.get("explanation_source") or "llm"] += 1
            found = defects_of(r.get("explanation") or "", prompt_texts=prompt_texts, allowed=r.get("title") or "")
            by_defect.update(found)
            if found:
                bad.append({"run_id": rid, "item_id": r.get("item_id"), "explanation": r.get("explanation"),
                            "defects": found})
        vs = store.graph_set(rid)
        for j in store.judgements(vs["set_id"]) if vs else []:
            if j["kind"] in graded:
                graded[j["kind"]]["judged"] += 1
                graded[j["kind"]]["passed"] += j["grade"] in ("S", "A")
    rate = {k: {"judged": c["judged"], "passed": c["passed"],
                "pass_rate": round(c["passed"] / c["judged"], 4) if c["judged"] else None} for k, c in graded.items()}
    return {"runs": len(run_ids), "shown_explanations": shown, "by_source": dict(by_source),
            "degenerate_shown": len(bad), "degenerate_share": round(len(bad) / shown, 4) if shown else None,
            "by_defect": dict(by_defect), "examples": bad[:20], "judge": rate}


def explainer_prompt_texts(registry: Any) -> list[str]:
    return [t for name in EXPLAINER_PROMPTS for t in registry.get(name).example_texts()]
