"""``app.py eval shopper``: what a shopper gets. The items the full graph emitted for each user of a
batch, scored against TIFU-KNN and personal top-frequency cut to the same length.

Definitions (the split, targets and metric functions are those of ``eval retrieval``):

* **Split** (``evals.protocol.make_split``): T is the batch's environment date (``--now``); the
  targets of a user are the distinct items they bought in ``[T, T + window)``, split into **repeat**
  (bought before T) and **explore** (not bought before T). Users are those of the batch with a
  finished run who are eligible under the protocol (>= ``min_events`` purchases before T and one in
  the window); failed, unfinished and ineligible users are left out and counted.
* **IntentRec's list**: the ``item_id`` of each recommendation the run emitted (the run log's
  ``recommendations`` rows, else the run output's ``recommendations``), in rank order, repeats dropped. **K_u** is its length; a user with nothing emitted has K_u = 0, scores 0
  wherever a target exists, and is counted under ``users.empty``.
* **Baselines** (training rows before T only, ``evals.baselines``): ``tifu_knn`` with the default
  ``TifuParams`` and ``top_frequency``, each list cut to the same K_u as IntentRec's for that user
  (a baseline with fewer items keeps what it has).
* **Recall@K_u, NDCG@K_u, HitRate@K_u** (``evals.metrics``) per user at that user's K_u, averaged
  over the users with a target in the split (all / repeat / explore).
* **mean_k**: mean list length over users; **repeat_share**: over every listed item of every user,
  the share the user bought before T.
* **Paired counts**: users on which IntentRec's Recall@K_u is higher / lower / tied with a
  baseline's (all, and explore), over users with a target in that split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from core.errors import IntentRecError
from evals.metrics import ACCURACY, SPLITS
from evals.tag_eval import _r, mean

METHODS = ("intentrec", "tifu_knn", "top_frequency")
BASELINES = METHODS[1:]
LABELS = {"intentrec": "IntentRec (emitted items)", "tifu_knn": "TIFU-KNN", "top_frequency": "personal top-frequency"}
METRIC_NAMES = {"recall": "Recall", "ndcg": "NDCG", "hit": "HitRate"}
PAIRED_SPLITS = ("all", "explore")


class ShopperEvalError(IntentRecError):
    """The evaluation cannot run as asked (no date on the batch, a tags-only batch, no user left)."""


# ------------------------------------------------------------------------------------------------
# the batch

def open_existing_runlog(runlog: Any = None) -> Any:
    """The run log at ``runlog`` (else the configured one); an error, not a new empty file, when the
    file does not exist."""
    from runlog.store import RunLogError, open_runlog

    if hasattr(runlog, "start_run"):
        return runlog
    if runlog is None:
        from runlog.settings import TraceSettings

        runlog = TraceSettings().runlog_file()
    if not Path(runlog).is_file():
        raise RunLogError(f"no run log at {runlog}: pass --runlog with the file an 'eval tags --full-graph' "
                          "batch was written to")
    return open_runlog(runlog)


def latest_batch(store: Any) -> str:
    from runlog.batches import BatchStore
    from runlog.store import RunLogError

    newest = BatchStore(store).list(limit=1)
    if not newest:
        raise RunLogError(f"no batch in the run log {store.path}")
    return newest[0]["batch_id"]


def emitted_items(store: Any, batch_id: str) -> dict[str, Any]:
    """``evals.tag_eval.intentrec_outputs`` of the batch plus, per finished user, the emitted item ids
    in rank order (repeats dropped): the run log's ``recommendations`` rows, where the recorder puts
    ``emit``'s list, else the run output's ``recommendations``."""
    from evals.tag_eval import distinct_in_order, intentrec_outputs

    ir = intentrec_outputs(store, batch_id)
    for rec in ir["users"].values():
        recs = store.recommendations(rec["run_id"]) or (store.get_run(rec["run_id"]).get("output") or {}).get(
            "recommendations") or []
        rec["items"] = distinct_in_order(str(r["item_id"]) for r in recs if r.get("item_id") is not None)
    return ir


# ------------------------------------------------------------------------------------------------
# scoring

def user_figures(ranked: list[str], relevant: dict[str, set[str]], k: int) -> dict[str, float | None]:
    """``recall/all`` ... ``hit/explore`` of one list at ``k`` (None without a target; 0 at k = 0)."""
    out: dict[str, float | None] = {}
    for name, fn in ACCURACY.items():
        for part in SPLITS:
            rel = relevant[part]
            out[f"{name}/{part}"] = (None if not rel else 0.0) if k == 0 else fn(ranked, rel, k)
    return out


def paired(per_user: dict[str, dict[str, Any]], a: str, b: str, part: str) -> dict[str, int]:
    """Users on which ``a``'s Recall@K_u is higher / lower / tied with ``b``'s (target in ``part``)."""
    out = {"wins": 0, "losses": 0, "ties": 0}
    for rec in per_user.values():
        x, y = rec[a][f"recall/{part}"], rec[b][f"recall/{part}"]
        if x is None or y is None:
            continue
        out["wins" if x > y else "losses" if x < y else "ties"] += 1
    return out


def score(users: list[str], relevant: dict[str, dict[str, set[str]]], seen: dict[str, Any],
          lists: dict[str, dict[str, list[str]]]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Every method's figures over ``users`` and a per-user record. ``lists["intentrec"][u]`` sets K_u;
    each baseline's list is cut to it here."""
    per_user: dict[str, dict[str, Any]] = {}
    for u in users:
        k = len(lists["intentrec"][u])
        rec: dict[str, Any] = {"k": k, "targets": {p: len(relevant[u][p]) for p in SPLITS}}
        for m in METHODS:
            ranked = list(lists[m].get(u, []))[:k]
            rec[m] = {"items": ranked, "repeats": sum(1 for i in ranked if i in seen[u]),
                      **user_figures(ranked, relevant[u], k)}
        per_user[u] = rec
    table: dict[str, dict[str, Any]] = {}
    for m in METHODS:
        rows = [per_user[u][m] for u in users]
        n_items = sum(len(r["items"]) for r in rows)
        table[m] = {**{f"{name}@k/{p}": _r(mean(r[f"{name}/{p}"] for r in rows)) for name in ACCURACY for p in SPLITS},
                    "mean_k": _r(mean(len(r["items"]) for r in rows)),
                    "repeat_share": _r(sum(r["repeats"] for r in rows) / n_items) if n_items else None,
                    "n_users": len(rows),
                    **{f"n_with_target/{p}": sum(1 for r in rows if r[f"recall/{p}"] is not None) for p in SPLITS}}
    return table, per_user


def loss_notes(table: dict[str, dict[str, Any]], pairs: dict[str, dict[str, dict[str, int]]]) -> list[str]:
    """One line per accuracy figure on which IntentRec is below a baseline, with both numbers."""
    notes = []
    ir = table["intentrec"]
    for b in BASELINES:
        for name, label in METRIC_NAMES.items():
            for p in SPLITS:
                key = f"{name}@k/{p}"
                a, c = ir[key], table[b][key]
                if a is None or c is None or a >= c:
                    continue
                pc = pairs[b].get(p) if name == "recall" else None
                tail = (f"; recall higher for {pc['wins']} users, lower for {pc['losses']}, tied for {pc['ties']}"
                        if pc else "")
                notes.append(f"IntentRec loses to {LABELS[b]} on {label}@K_u/{p}: {a:.4f} vs {c:.4f} "
                             f"({ir[f'n_with_target/{p}']} users with a {p} target{tail})")
    return notes


# ------------------------------------------------------------------------------------------------
# the whole evaluation

def _batch_date(info: dict[str, Any], cutoff: datetime | None) -> datetime:
    from core.options import parse_date

    spec = info["spec"] or {}
    if (spec.get("overrides") or {}).get("tags_only"):
        raise ShopperEvalError(f"batch {info['batch_id']} stopped after the tag judge (no items): run "
                               "'eval tags --full-graph' for a batch that emits items")
    if not spec.get("now"):
        raise ShopperEvalError(f"batch {info['batch_id']} was run without --now: a temporal evaluation needs the "
                               "date T")
    t_batch = parse_date(spec["now"], "batch --now")
    if cutoff is not None and cutoff != t_batch:
        raise ShopperEvalError(f"--cutoff {cutoff:%Y-%m-%d} differs from batch {info['batch_id']}'s date "
                               f"{t_batch:%Y-%m-%d}")
    return t_batch


def run_shopper_eval(batch_id: str | None = None, *, runlog: Any = None, dataset: str | None = None,
                     cutoff: datetime | None = None, window_days: int = 28, min_events: int = 20,
                     say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Score a finished batch's emitted items against TIFU-KNN and top-frequency at the same K per
    user. Runs no graph: users that are not done are left out."""
    from behavior.adapters import DEFAULT_DATASET, load_dataset_cached
    from evals.baselines import tifu_knn, top_frequency
    from evals.protocol import Protocol, make_split
    from retrieval.repeat import TifuParams
    from runlog.batches import BatchStore

    say = say or (lambda _m: None)
    store = open_existing_runlog(runlog)
    info = BatchStore(store).get(batch_id or latest_batch(store))
    batch_id = info["batch_id"]
    cutoff = _batch_date(info, cutoff)
    spec_ds = info["spec"].get("dataset") or info.get("dataset")
    if dataset and spec_ds and dataset != spec_ds:
        raise ShopperEvalError(f"--dataset {dataset} differs from batch {batch_id}'s dataset {spec_ds}")
    dataset = dataset or spec_ds or DEFAULT_DATASET
    ir = emitted_items(store, batch_id)
    if not ir["users"]:
        raise ShopperEvalError(f"batch {batch_id} has no finished run (counts {info['counts']}): run or resume it "
                               "with 'app.py batch' or 'eval tags --batch'")
    say(f"batch {batch_id}: {len(ir['users'])} finished users at T {cutoff:%Y-%m-%d}")
    ds = load_dataset_cached(dataset)
    full = make_split(ds, Protocol(cutoff=cutoff, window_days=window_days, min_train_events=min_events))
    eligible = set(full.users)
    done = [i["user_id"] for i in BatchStore(store).items(batch_id) if i["user_id"] in ir["users"]]
    users = sorted(u for u in done if u in eligible)
    excluded = {"failed": sorted(ir["failed"]), "not_finished": sorted(ir["missing"]),
                "not_eligible": sorted(u for u in done if u not in eligible)}
    if not users:
        raise ShopperEvalError(f"no user of batch {batch_id} left to evaluate: "
                               + ", ".join(f"{len(v)} {r.replace('_', ' ')}" for r, v in excluded.items()))
    split = replace(full, users=users)
    emitted = {u: ir["users"][u]["items"] for u in users}
    k_max = max(len(x) for x in emitted.values())
    tifu = TifuParams()
    lists = {"intentrec": emitted, "tifu_knn": tifu_knn(split, k_max, tifu) if k_max else {},
             "top_frequency": top_frequency(split, k_max) if k_max else {}}
    table, per_user = score(users, full.relevant, full.train_counts, lists)
    pairs = {b: {p: paired(per_user, "intentrec", b, p) for p in PAIRED_SPLITS} for b in BASELINES}
    empty = [u for u in users if not emitted[u]]
    spec = info["spec"]
    notes = loss_notes(table, pairs)
    if empty:
        notes.append(f"{len(empty)} of {len(users)} users got no item (K = 0): every figure 0 for them, for every "
                     "method")
    if any(excluded.values()):
        notes.append(f"left out: {', '.join(f'{len(v)} {r}' for r, v in excluded.items() if v)}")
    if not (spec.get("index_cutoff") and spec["index_cutoff"] <= cutoff.date().isoformat()):
        notes.append(f"the batch's index cutoff is {spec.get('index_cutoff')!r}, not T: the retriever may have "
                     "seen purchases after T")
    notes.append(f"{len(users)} users: one user moves a hit rate by {1 / len(users):.3f}")
    end = cutoff + timedelta(days=window_days)
    return {
        "command": "eval shopper",
        "dataset": dataset,
        "protocol": {"cutoff": cutoff.isoformat(), "end": end.isoformat(), "window_days": window_days,
                     "min_train_events": min_events, "n_users": len(users), "batch_id": batch_id,
                     "runlog": str(store.path), "models": ir["models"][0] if len(ir["models"]) == 1 else ir["models"],
                     "backend": spec.get("backend"), "model": spec.get("model"), "tifu_params": tifu.as_dict(),
                     "target_behaviors": full.stats["target_behaviors"]},
        "users": {"evaluated": users, "n_evaluated": len(users), "empty": empty, "n_empty": len(empty),
                  "excluded": excluded, "batch_counts": info["counts"]},
        "metrics": table,
        "paired": pairs,
        "notes": notes,
        "per_user": per_user,
    }


# ------------------------------------------------------------------------------------------------
# human output

def _fmt(x: Any) -> str:
    return "–" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def _models(models: Any) -> str:
    """``{"planner": "m", ...}`` as one name when every role used the same model, else role=model."""
    if isinstance(models, list):
        return "; ".join(_models(m) for m in models) or "–"
    if isinstance(models, dict):
        names = set(models.values())
        return str(next(iter(names))) if len(names) == 1 else ", ".join(f"{r}={m}" for r, m in models.items())
    return _fmt(models)


def render(report: dict[str, Any], console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=max(Console().width, 160))
    p, u = report["protocol"], report["users"]
    console.print(f"[bold]What a shopper gets[/] on {report['dataset']}: batch {p['batch_id']}, T {p['cutoff'][:10]}, "
                  f"{p['window_days']}-day window, {u['n_evaluated']} users ({u['n_empty']} with no item), "
                  f"model {_models(p['models'] or p['model'])}")
    t = Table(title="emitted items vs baselines cut to the same K per user")
    t.add_column("method", no_wrap=True)
    t.add_column("mean K", justify="right")
    cols = [f"{name}@k/{part}" for part in SPLITS for name in ACCURACY]
    for c in cols:
        name, part = c.split("@k/")
        t.add_column(f"{METRIC_NAMES[name]} {part}", justify="right")
    t.add_column("repeat share", justify="right")
    for m, row in report["metrics"].items():
        t.add_row(LABELS.get(m, m), _fmt(row["mean_k"]), *[_fmt(row[c]) for c in cols], _fmt(row["repeat_share"]))
    console.print(t)
    for b, by_part in report["paired"].items():
        for part, c in by_part.items():
            console.print(f"paired Recall@K_u/{part}, IntentRec vs {LABELS.get(b, b)}: higher for {c['wins']}, "
                          f"lower for {c['losses']}, tied for {c['ties']}")
    ir = report["metrics"]["intentrec"]
    console.print("users with a target: " + ", ".join(f"{s} {ir[f'n_with_target/{s}']}" for s in SPLITS))
    for n in report["notes"]:
        console.print(f"  • {n}")
