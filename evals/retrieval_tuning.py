"""Choose the retriever's free settings on a *validation* split, never on the test split.

The test split of ``app.py eval retrieval`` is T = 2017-10-01 + 28 days. This module evaluates a small,
declared grid on the 28 days *before* T (validation cutoff T_val = T − 28 days, towers built as of
T_val), with the same protocol otherwise, and picks, per build setting, the serving setting that
maximises validation explore-Recall@50 among those keeping overall Recall@50 at >= 85% of the
collaborative-only variant. The defaults in ``RetrievalSettings`` / ``evals.retrieval_eval`` are the
choices this made; the figures are recorded in ``docs/retrieval.md``.

    python -m evals.retrieval_tuning --epochs 1 --out tuning.json
    python -m evals.retrieval_tuning --sasrec --epochs 12 --out sasrec-epochs.json
    python -m evals.retrieval_tuning --build-cost --out build-cost.json

SASRec's epoch count is chosen the same way: validation Recall@50 after each epoch.

``--build-cost`` chooses the cheaper tower training of the cold build ([2/7]): each build in
``COST_GRID`` is trained as of T_val, timed, and evaluated with the default serving settings (and
collaborative-only); the choice is the fastest build whose validation Recall@50 and explore-Recall@50
(fused) both reach ``COST_TOLERANCE`` of the reference build (the earlier default: 3 epochs, batch 1024).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

from behavior.adapters import load_dataset
from evals.metrics import evaluate_lists
from evals.protocol import make_split, validation_protocol
from evals.retrieval_eval import intentrec_lists, user_tags
from retrieval.service import load_or_build_retriever
from retrieval.settings import RetrievalSettings

BUILD_GRID = {"tag_logq": [1.0, 0.5]}
SERVING_GRID = {"n_tags": [10, 20], "quota": ["even", "2x", "none"], "overfetch": [3]}


def _quota(mode: str, k: int, beta: float, n_tags: int) -> int | None:
    slots = round((1 - beta) * k)
    even = -(-slots // n_tags)
    return {"even": None, "2x": 2 * even, "none": slots}[mode]


def run(dataset: str = "completejourney", epochs: int = 1, k: int = 50, beta: float = 0.6, threads: int | None = 1,
        build_values: dict | None = None) -> dict:
    ds = load_dataset(dataset)
    split = make_split(ds, validation_protocol(ds))
    tags = {n: user_tags(split, ds, n) for n in SERVING_GRID["n_tags"]}
    rows = []
    for build in itertools.product(*(build_values or BUILD_GRID).values()):
        bset = dict(zip((build_values or BUILD_GRID).keys(), build, strict=True))
        settings = RetrievalSettings(epochs=epochs, cutoff=split.cutoff, num_threads=threads, **bset)
        r = load_or_build_retriever(ds, settings, progress=False)

        def ev(rr, tg, b, _k=k):
            m = evaluate_lists(intentrec_lists(rr, split, tg, _k, b), split.relevant, [_k], split.category_of,
                               split.head, len(split.catalogue))
            return {"all": m[f"recall@{_k}/all"], "explore": m[f"recall@{_k}/explore"], "tail": m[f"tail@{_k}"],
                    "diversity": m[f"diversity@{_k}"]}

        collab = ev(r, tags[10], 1.0)
        rows.append({"build": bset, "serving": "collab (β=1)", **collab})
        for n, qmode, of in itertools.product(*SERVING_GRID.values()):
            t0 = time.perf_counter()
            rr = r.with_serving(per_tag_quota=_quota(qmode, k, beta, n), overfetch=of)
            m = ev(rr, tags[n], beta)
            rows.append({"build": bset, "serving": {"n_tags": n, "quota": qmode, "overfetch": of}, **m,
                         "eligible": m["all"] >= 0.85 * collab["all"], "seconds": round(time.perf_counter() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
    eligible = [r for r in rows if r.get("eligible")]
    best = max(eligible, key=lambda r: (r["explore"], r["tail"])) if eligible else None
    return {"validation_cutoff": split.cutoff.isoformat(), "users": len(split.users), "epochs": epochs, "k": k,
            "beta": beta, "rows": rows, "best": best}


#: Tower training settings tried for the cold build; the first is the reference (the earlier default).
#: The first row is the reference (the default before [2/7]). A batch of 4096 was tried and dropped: slower per
#: sample on this CPU (docs/retrieval.md). The narrower towers (``dim`` 128, ``hidden`` 256) halve the
#: matrix products, which are most of a step once the loss is computed without extra (B, B) passes.
COST_GRID = [{"epochs": 3, "batch_size": 1024, "lr": 1e-3}, {"epochs": 2, "batch_size": 1024, "lr": 1e-3},
             {"epochs": 1, "batch_size": 1024, "lr": 1e-3}, {"epochs": 1, "batch_size": 1024, "lr": 2e-3},
             {"epochs": 2, "batch_size": 1024, "lr": 1e-3, "dim": 128, "hidden": 256},
             {"epochs": 1, "batch_size": 1024, "lr": 1e-3, "dim": 128, "hidden": 256}]
#: A cheaper build must keep this share of the reference's validation recall (overall and explore).
COST_TOLERANCE = 0.98


def cheapest_within(rows: list[dict], tolerance: float = COST_TOLERANCE) -> dict:
    """The row with the least training time whose fused validation recall (overall and explore) keeps
    ``tolerance`` of the first row's (the reference build)."""
    ref = rows[0]["fused"]
    ok = [r for r in rows if r["fused"]["all"] >= tolerance * ref["all"] and r["fused"]["explore"] >= tolerance * ref["explore"]]
    return min(ok, key=lambda r: r["train_seconds"])


def build_cost(dataset: str = "completejourney", k: int = 50, threads: int | None = None,
               grid: list[dict] | None = None) -> dict:
    """Validation recall against training time for each tower-training setting of ``grid``."""
    ds = load_dataset(dataset)
    split = make_split(ds, validation_protocol(ds))
    base = RetrievalSettings()
    tags = user_tags(split, ds, 10)
    rows = []
    for build in grid or COST_GRID:
        settings = RetrievalSettings(cutoff=split.cutoff, num_threads=threads, **build)
        r = load_or_build_retriever(ds, settings, progress=False)
        row = {"build": build, "build_seconds": r.config.get("build_seconds"),
               "train_seconds": round(sum(e["seconds"] for e in r.config["train"]["epochs"]), 1),
               "text_embedding_seconds": r.config.get("text_embedding_seconds")}
        for name, beta in (("fused", base.beta), ("collab", 1.0)):
            m = evaluate_lists(intentrec_lists(r, split, tags, k, beta), split.relevant, [k], split.category_of,
                               split.head, len(split.catalogue))
            row[name] = {"all": round(m[f"recall@{k}/all"], 4), "explore": round(m[f"recall@{k}/explore"], 4)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"validation_cutoff": split.cutoff.isoformat(), "users": len(split.users), "k": k,
            "tolerance": COST_TOLERANCE, "rows": rows, "best": cheapest_within(rows)}


def sasrec_epochs(dataset: str = "completejourney", max_epochs: int = 12, k: int = 50) -> dict:
    """Validation Recall@50 of SASRec after each epoch (to choose the epoch count for the test run)."""
    from evals.sasrec import SASRecConfig, sasrec_recommend, train_sasrec

    ds = load_dataset(dataset)
    split = make_split(ds, validation_protocol(ds))

    def on_epoch(model, seqs, ep):
        m = evaluate_lists(sasrec_recommend(model, seqs, split, k), split.relevant, [k], split.category_of,
                           split.head, len(split.catalogue))
        out = {"val_recall": round(m[f"recall@{k}/all"], 4), "val_explore": round(m[f"recall@{k}/explore"], 4)}
        print(ep, out, flush=True)
        return out

    _, _, info = train_sasrec(split, SASRecConfig(epochs=max_epochs), progress=False, on_epoch=on_epoch)
    best = max(info["epochs"], key=lambda e: e["val_recall"])
    return {"validation_cutoff": split.cutoff.isoformat(), "epochs": info["epochs"], "best_epoch": best["epoch"]}


def _write(res: dict, out: str | None) -> None:
    if out:
        with open(out, "w", encoding="utf-8") as f:
            f.write(json.dumps(res, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="completejourney")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: 1; the cores for --build-cost)")
    ap.add_argument("--tag-logq", type=float, nargs="*", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--sasrec", action="store_true", help="choose SASRec's epoch count instead")
    ap.add_argument("--build-cost", action="store_true", help="choose the tower training of the cold build instead")
    a = ap.parse_args()
    if a.build_cost:
        res = build_cost(a.dataset, threads=a.threads)
        _write(res, a.out)
        print(json.dumps(res["best"]))
        return
    if a.sasrec:
        import torch

        torch.set_num_threads(a.threads or 1)
        res = sasrec_epochs(a.dataset, max_epochs=max(a.epochs, 2))
        _write(res, a.out)
        print(json.dumps(res))
        return
    res = run(a.dataset, epochs=a.epochs, threads=a.threads or 1,
              build_values={"tag_logq": a.tag_logq} if a.tag_logq else None)
    _write(res, a.out)
    print(json.dumps(res["best"]))


if __name__ == "__main__":
    main()
