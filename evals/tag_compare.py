"""Two ``eval tags`` batches on the same users, side by side.

The use it was built for: the embedded model in process against the same weights served by vLLM
(``eval tags --backend openai --base-url ...``). Same weights should give figures that agree within
noise, so the comparison shows, for the users both batches finished:

* each batch's IntentRec figures (HR@K, discovery HR@K, tags and distinct categories per user);
* paired hit counts (hit by both, only by the first, only by the second, by neither), the honest way
  to read a difference on a few dozen users;
* how far the two runs' tags agree per user (identical lists, Jaccard of the tag strings and of the
  categories they map to);
* the model calls: structured calls that parsed, failed calls, retries, generated tokens, and the
  wall time per user and users per minute of each batch.

Both reports come from :func:`evals.tag_eval.run_tag_eval` with ``resume=False``: the comparison
runs nothing, it reads what the two batches logged.
"""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from evals.run_stats import call_stats
from evals.tag_eval import TagEvalError, _r, run_tag_eval

#: the per-user hit fields compared in pairs (the expert_* ones: the experts' own final tags, without
#: the arbiter's refill from the candidate tools)
PAIRED = (("hit", "hr@k"), ("discovery_hit", "discovery_hr@k"), ("expert_hit", "expert_hr@k"),
          ("expert_discovery_hit", "expert_discovery_hr@k"))


def jaccard(a: Sequence[str], b: Sequence[str]) -> float | None:
    sa, sb = {x.strip().lower() for x in a}, {x.strip().lower() for x in b}
    return len(sa & sb) / len(sa | sb) if sa | sb else None


def paired_counts(xs: Sequence[float | None], ys: Sequence[float | None]) -> dict[str, int]:
    """Users hit by both, only by the first, only by the second, by neither (users without a target
    are left out)."""
    out = {"both": 0, "only_first": 0, "only_second": 0, "neither": 0}
    for x, y in zip(xs, ys, strict=True):
        if x is None or y is None:
            continue
        key = ("both" if y else "only_first") if x else ("only_second" if y else "neither")
        out[key] += 1
    return out


def compare(first: dict[str, Any], second: dict[str, Any], *, names: Sequence[str], store: Any) -> dict[str, Any]:
    """Compare two ``run_tag_eval`` reports over the users both evaluated."""
    for r in (first, second):
        if r.get("baselines_only") or "batch" not in r:
            raise TagEvalError("compare needs two evaluated batches, not a baselines-only report")
    if first["protocol"]["cutoff"] != second["protocol"]["cutoff"]:
        raise TagEvalError(f"the batches have different dates T: {first['protocol']['cutoff']} vs "
                           f"{second['protocol']['cutoff']}")
    ua, ub = set(first["users"]["evaluated"]), set(second["users"]["evaluated"])
    users = sorted(ua & ub)
    if not users:
        raise TagEvalError("the two batches have no evaluated user in common")
    pa, pb = first["per_user"], second["per_user"]
    side: dict[str, Any] = {}
    for name, rep, per in ((names[0], first, pa), (names[1], second, pb)):
        recs = [per[u]["intentrec"] for u in users]
        hits = [x["hit"] for x in recs if x["hit"] is not None]
        disc = [x["discovery_hit"] for x in recs if x["discovery_hit"] is not None]
        side[name] = {
            "batch_id": rep["batch"]["batch_id"], "model": rep.get("model"),
            "backend": rep["batch"]["spec"].get("backend"), "base_url": rep["batch"]["spec"].get("base_url"),
            "hr@k": _r(sum(hits) / len(hits)) if hits else None, "hits": int(sum(hits)),
            "discovery_hr@k": _r(sum(disc) / len(disc)) if disc else None, "discovery_hits": int(sum(disc)),
            "tags_per_user": _r(statistics.mean(len(x["tags"]) for x in recs)),
            "distinct_categories_per_user": _r(statistics.mean(len({t["category"] for t in x["tags"]}) for x in recs)),
            "users_without_tags": sum(1 for x in recs if not x["tags"]),
            "expert_tags": (rep.get("intentrec") or {}).get("expert_tags"),
            "judge": (rep.get("intentrec") or {}).get("judge"),
            "calls": call_stats(store, [rep["intentrec"]["run_ids"][u] for u in users]),
        }
    agree = []
    for u in users:
        ta = [t["tag"] for t in pa[u]["intentrec"]["tags"]]
        tb = [t["tag"] for t in pb[u]["intentrec"]["tags"]]
        ca = [t["category"] for t in pa[u]["intentrec"]["tags"]]
        cb = [t["category"] for t in pb[u]["intentrec"]["tags"]]
        agree.append({"user": u, "identical": [x.lower() for x in ta] == [x.lower() for x in tb],
                      "tag_jaccard": jaccard(ta, tb), "category_jaccard": jaccard(ca, cb)})

    def _mean(key: str) -> float | None:
        xs = [a[key] for a in agree if a[key] is not None]
        return _r(statistics.mean(xs)) if xs else None

    paired = {label: paired_counts([pa[u]["intentrec"].get(f) for u in users], [pb[u]["intentrec"].get(f) for u in users])
              for f, label in PAIRED}
    baselines = {m: {"hr@k": first["metrics"][m]["hr@k"], "discovery_hr@k": first["metrics"][m]["discovery_hr@k"]}
                 for m in first["metrics"] if m != "intentrec"} if ua == ub else None
    return {"command": "eval tags-compare", "names": list(names), "n_users": len(users),
            "only_in": {names[0]: sorted(ua - ub), names[1]: sorted(ub - ua)},
            "protocol": first["protocol"], "by_batch": side, "paired": paired,
            "agreement": {"identical_tag_lists": sum(a["identical"] for a in agree),
                          "tag_jaccard_mean": _mean("tag_jaccard"), "category_jaccard_mean": _mean("category_jaccard"),
                          "per_user": agree},
            "baselines_same_users": baselines,
            "note": f"{len(users)} users: one user moves a hit rate by {1 / len(users):.3f}"}


def run_compare(batches: Sequence[str], *, names: Sequence[str] | None = None, runlog: Any = None,
                say: Any = None) -> dict[str, Any]:
    """Score both finished batches (running nothing) and compare them."""
    from evals.tag_eval import _store

    if len(batches) != 2:
        raise TagEvalError(f"give exactly two batches to compare, got {len(batches)}")
    names = list(names or batches)
    if len(names) != 2:
        raise TagEvalError(f"give two names, got {len(names)}")
    store = _store(runlog)
    reports = [run_tag_eval(batch_id=b, runlog=store, resume=False, say=say) for b in batches]
    return compare(reports[0], reports[1], names=names, store=store)


def render(report: dict[str, Any], console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=max(Console().width, 140))
    a, b = report["names"]
    t = Table(title=f"IntentRec tags, {a} vs {b}: {report['n_users']} users, T {report['protocol']['cutoff'][:10]}")
    t.add_column("figure")
    t.add_column(a, justify="right")
    t.add_column(b, justify="right")
    rows = [("HR@K", "hr@k"), ("discovery HR@K", "discovery_hr@k"), ("tags / user", "tags_per_user"),
            ("distinct categories / user", "distinct_categories_per_user"), ("users without tags", "users_without_tags")]
    for label, key in rows:
        t.add_row(label, str(report["by_batch"][a][key]), str(report["by_batch"][b][key]))
    for label, key in (("expert-written tags / user", "per_user"), ("HR@K, expert-written tags only", "hr@k"),
                       ("discovery HR@K, expert-written tags only", "discovery_hr@k")):
        t.add_row(label, *(str((report["by_batch"][n]["expert_tags"] or {}).get(key)) for n in (a, b)))
    for label, key in (("model calls", "calls"), ("failed calls", "failed_calls"), ("unparsed calls", "unparsed_calls"),
                       ("valid share", "valid_share"), ("retried calls", "retried_calls"),
                       ("generated tokens / user", "completion_tokens_per_user"),
                       ("wall s / user, median", "wall_s_median"), ("users / min", "users_per_min")):
        t.add_row(label, str(report["by_batch"][a]["calls"][key]), str(report["by_batch"][b]["calls"][key]))
    console.print(t)
    for label, c in report["paired"].items():
        console.print(f"{label}: both {c['both']}, only {a} {c['only_first']}, only {b} {c['only_second']}, "
                      f"neither {c['neither']}")
    g = report["agreement"]
    console.print(f"identical tag lists {g['identical_tag_lists']}/{report['n_users']}; mean Jaccard: tags "
                  f"{g['tag_jaccard_mean']}, categories {g['category_jaccard_mean']}")
    console.print(report["note"])
