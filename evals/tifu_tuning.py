"""Choose TIFU-KNN's parameters on a validation split, never on the test window.

The validation split is the protocol's split moved back one window: cutoff T − window, the same
window length and user filter, everything before it as history. The search is staged, as the
paper's own tuning is: first the basket-vector parameters (basket = receipt timestamp or day, groups,
within-group and across-group decay) at the paper's k and α, then k and α for the best vectors. The objective is validation
Recall@50 over all test items (the metric the retrieval table leads with). The chosen parameters
are both the TIFU-KNN baseline's and the retriever's repeat channel's (``RetrievalSettings.tifu_*``).

    python -m evals.tifu_tuning --out tifu.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import replace

from evals.metrics import evaluate_lists
from evals.protocol import Split, make_split, validation_protocol
from retrieval.repeat import BasketHistory, TifuParams

VECTOR_GRID = {"basket": ["timestamp", "day"], "groups": [3, 7, 12], "within_decay": [0.9, 1.0],
               "group_decay": [0.6, 0.7, 0.8]}
KNN_GRID = {"k": [100, 300, 600], "alpha": [0.5, 0.7, 0.9]}
OBJECTIVE = "recall@50/all"


def tune(split: Split, *, k: int = 50, vector_grid: dict | None = None, knn_grid: dict | None = None,
         log=print) -> dict:
    from evals.baselines import tifu_knn

    histories: dict[str, BasketHistory] = {}
    rows = []

    def score(p: TifuParams) -> float:
        t0 = time.perf_counter()
        if p.basket not in histories:
            histories[p.basket] = BasketHistory.from_behaviors(split.train, split.catalogue, basket=p.basket)
        m = evaluate_lists(tifu_knn(split, k, p, history=histories[p.basket]), split.relevant, [k], split.category_of, split.head,
                           len(split.catalogue))
        row = {"params": p.as_dict(), OBJECTIVE: round(m[f"recall@{k}/all"], 5),
               f"ndcg@{k}/all": round(m[f"ndcg@{k}/all"], 5), "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        log(json.dumps(row))
        return m[f"recall@{k}/all"]

    base = TifuParams(groups=7, within_decay=0.9, group_decay=0.7, k=300, alpha=0.7)  # the paper's setting
    vg = vector_grid or VECTOR_GRID
    best_v = max((replace(base, **dict(zip(vg, combo, strict=True))) for combo in itertools.product(*vg.values())),
                 key=score)
    kg = knn_grid or KNN_GRID
    best = max((replace(best_v, **dict(zip(kg, combo, strict=True))) for combo in itertools.product(*kg.values())),
               key=score)
    best_row = next(r for r in reversed(rows) if r["params"] == best.as_dict())
    return {"validation_cutoff": split.cutoff.isoformat(), "validation_end": split.end.isoformat(),
            "users": len(split.users), "objective": OBJECTIVE, "best": best.as_dict(),
            "best_validation": best_row, "rows": rows}


def main() -> None:
    from behavior.adapters import load_dataset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="completejourney")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    ds = load_dataset(a.dataset)
    res = tune(make_split(ds, validation_protocol(ds)))
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            f.write(json.dumps(res, indent=1))
    print(json.dumps(res["best"]))


if __name__ == "__main__":
    main()
