"""Fit the channel split model (``retrieval/channel_split.py``) on a validation split, never on the test window.

Validation = the protocol moved back one window (``evals.protocol.validation_protocol``): towers built
as of the validation cutoff, the repeat channel's TIFU-KNN scores as of that cutoff, and labels from
the validation window. For every validation user, every item the user bought (the repeat model
re-ranks them all) and the discovery channel's top ``k`` unseen items (the fused user/tag channels, the user's bought items
excluded, the same tags the evaluation gives it) become rows ``(candidate features, bought in the
window?)``; one logistic regression per channel (scikit-learn, standardised features, L2, C = 1).
The discovery floor (``ChannelSplit.min_discovery_share``) is then chosen on the same validation split
by :data:`FLOOR_RULE`: as much guaranteed discovery as the validation figures allow without falling
below TIFU-KNN, the strongest simple baseline.

    python -m evals.channel_split_fit --out retrieval/channel_split.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from evals.protocol import Protocol, Split, make_split, validation_protocol
from retrieval.channel_split import ChannelSplit, Logistic, candidate_features
from retrieval.repeat import FEATURE_NAMES, PAIR_FEATURE_NAMES, TifuParams
from retrieval.service import Retriever, load_or_build_retriever
from retrieval.settings import RetrievalSettings


def candidate_rows(retriever: Retriever, split: Split, tags: dict[str, list[str]], k: int,
                   chunk: int = 256) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per channel, (features, labels) over the evaluated users' top-k candidates."""
    fused = retriever.with_serving(repeat_channel=False)
    users = [u for u in split.users if tags.get(u) and retriever.repeat.user_features(u) is not None]
    rows: dict[str, tuple[list, list]] = {"repeat": ([], []), "discovery": ([], [])}
    ids = retriever.item_ids
    for s in range(0, len(users), chunk):
        batch = users[s:s + chunk]
        reps = [retriever.repeat.candidates(u) for u in batch]
        seen = [{ids[c] for c in r[0]} for r in reps]
        disc = fused.search_batch(batch, [tags[u] for u in batch], k, exclude_items=seen)
        for u, (codes, scores, pairs), d in zip(batch, reps, disc, strict=True):
            feats = retriever.repeat.user_features(u)
            relevant = split.relevant[u]["all"]
            # every bought item: the repeat model re-ranks them all
            rows["repeat"][0].append(candidate_features(np.arange(len(codes)), scores, feats, pairs))
            rows["repeat"][1].append(np.array([ids[c] in relevant for c in codes], dtype=np.int8))
            if d.candidates:
                rows["discovery"][0].append(candidate_features(np.arange(len(d.candidates)),
                                                               np.array([c.score for c in d.candidates]), feats))
                rows["discovery"][1].append(np.array([c.item_id in relevant for c in d.candidates], dtype=np.int8))
    width = {"repeat": 2 + len(PAIR_FEATURE_NAMES) + len(FEATURE_NAMES), "discovery": 2 + len(FEATURE_NAMES)}
    return {ch: (np.concatenate(x) if x else np.zeros((0, width[ch])),
                 np.concatenate(y) if y else np.zeros(0, np.int8)) for ch, (x, y) in rows.items()}


def fit_logistic(X: np.ndarray, y: np.ndarray, features: list[str], seed: int = 42) -> tuple[Logistic, dict]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y)) < 2:
        raise ValueError(f"need positive and negative rows to fit a channel model, got {len(y)} rows, "
                         f"{int(y.sum())} positive")
    sc = StandardScaler().fit(X)
    scale = np.where(sc.scale_ > 0, sc.scale_, 1.0)
    lr = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit((X - sc.mean_) / scale, y)
    model = Logistic(mean=sc.mean_.tolist(), scale=scale.tolist(), coef=lr.coef_[0].tolist(),
                     intercept=float(lr.intercept_[0]))
    p = model.predict(X)
    return model, {"rows": int(len(y)), "positives": int(y.sum()), "base_rate": round(float(y.mean()), 5),
                   "auc_in_sample": round(float(roc_auc_score(y, p)), 4),
                   "features": features,
                   "coef": [round(c, 4) for c in model.coef]}


def fit_channel_split(dataset, *, protocol: Protocol | None = None, settings: RetrievalSettings | None = None,
                      tifu: TifuParams | None = None, tags_fn=None, k: int = 50, progress: bool = False,
                      min_discovery_share: float | None = None, root=None) -> tuple[ChannelSplit, dict]:
    """Build (or load) the validation towers, collect candidate rows, fit both channel models and
    choose the discovery floor on the validation split (``min_discovery_share`` fixes it instead)."""
    from evals.retrieval_eval import user_tags

    t0 = time.perf_counter()
    vsplit = make_split(dataset, validation_protocol(dataset, protocol))
    vset = (settings or RetrievalSettings()).model_copy(update={"cutoff": vsplit.cutoff})
    retriever = load_or_build_retriever(dataset, vset, progress, root=root)
    retriever.use_tifu(dataset, tifu or TifuParams())
    tags = (tags_fn or user_tags)(vsplit, dataset)
    rows = candidate_rows(retriever, vsplit, tags, k)
    models, info = {}, {}
    names = {"repeat": ["log1p_rank", "score_over_best", *PAIR_FEATURE_NAMES, *FEATURE_NAMES],
             "discovery": ["log1p_rank", "score_over_best", *FEATURE_NAMES]}
    for ch, (X, y) in rows.items():
        models[ch], info[ch] = fit_logistic(X, y, names[ch], seed=vsplit.protocol.seed)
    split = ChannelSplit(models=models, min_discovery_share=0.0)
    floor, floor_rows = (choose_floor(retriever, split, vsplit, tags, tifu or TifuParams())
                         if min_discovery_share is None else (min_discovery_share, []))
    split.min_discovery_share = floor
    split.fitted_on = {"dataset": dataset.name, "validation_cutoff": vsplit.cutoff.isoformat(),
                       "validation_end": vsplit.end.isoformat(), "users": len(vsplit.users), "k": k,
                       "tifu": (tifu or TifuParams()).as_dict(), "towers": retriever.directory.name, "channels": info,
                       "min_discovery_share": floor, "floor_rule": FLOOR_RULE, "floor_grid": floor_rows,
                       "seconds": round(time.perf_counter() - t0, 1)}
    return split, split.fitted_on


FLOOR_GRID = (0.0, 0.05, 0.1, 0.2)
FLOOR_RULE = ("the largest discovery floor whose served lists keep validation Recall@50/all and NDCG@10/all at "
              "or above TIFU-KNN's on the same validation split (0 if none does)")


def choose_floor(retriever: Retriever, split: ChannelSplit, vsplit: Split, tags: dict[str, list[str]],
                 tifu: TifuParams) -> tuple[float, list[dict]]:
    """The discovery floor by :data:`FLOOR_RULE`, with every grid point's validation figures. The split
    model scored here was fitted on the same validation rows, so its figures are in-sample."""
    import copy

    from evals.baselines import tifu_knn
    from evals.metrics import evaluate_lists
    from evals.retrieval_eval import intentrec_lists

    def figures(lists: dict[int, dict[str, list[str]]]) -> dict[str, float]:
        m = {}
        for kk in (10, 50):
            m.update(evaluate_lists(lists[kk], vsplit.relevant, [kk], vsplit.category_of, vsplit.head,
                                    len(vsplit.catalogue)))
        return {key: round(m[key], 5) for key in ("recall@50/all", "ndcg@10/all", "recall@50/explore")}

    t = tifu_knn(vsplit, 50, tifu)
    base = figures({10: {u: r[:10] for u, r in t.items()}, 50: t})
    rows = [{"method": "tifu_knn", **base}]
    for share in FLOOR_GRID:
        r = copy.copy(retriever)
        r.split = ChannelSplit(models=split.models, min_discovery_share=share)
        rows.append({"min_discovery_share": share,
                     **figures({kk: intentrec_lists(r, vsplit, tags, kk, r.settings.beta) for kk in (10, 50)})})
    ok = [row["min_discovery_share"] for row in rows[1:]
          if row["recall@50/all"] >= base["recall@50/all"] and row["ndcg@10/all"] >= base["ndcg@10/all"]]
    return (max(ok) if ok else 0.0), rows


def main() -> None:
    from behavior.adapters import load_dataset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="completejourney")
    ap.add_argument("--out", required=True, help="where to write the model JSON")
    a = ap.parse_args()
    split, info = fit_channel_split(load_dataset(a.dataset), progress=True)
    split.save(a.out)
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
