"""Fit the channel split model (``retrieval/channel_split.py``) on a validation split, never on the test window.

Validation = the protocol moved back one window (``evals.protocol.validation_protocol``): towers built
as of the validation cutoff, the repeat channel's TIFU-KNN scores as of that cutoff, and labels from
the validation window. For every validation user, the repeat channel's top ``k`` bought items and the
discovery channel's top ``k`` unseen items (the fused user/tag channels, the user's bought items
excluded, the same tags the evaluation gives it) become rows ``(candidate features, bought in the
window?)``; one logistic regression per channel (scikit-learn, standardised features, L2, C = 1).

    python -m evals.channel_split_fit --out retrieval/channel_split.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from evals.protocol import Protocol, Split, make_split, validation_protocol
from retrieval.channel_split import ChannelSplit, Logistic, candidate_features
from retrieval.repeat import FEATURE_NAMES, TifuParams
from retrieval.service import Retriever, load_or_build_retriever, load_repeat_scores
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
        reps = [retriever.repeat.ranked(u, None) for u in batch]
        seen = [{ids[c] for c, _ in r} for r in reps]
        disc = fused.search_batch(batch, [tags[u] for u in batch], k, exclude_items=seen)
        for u, rep, d in zip(batch, reps, disc, strict=True):
            feats = retriever.repeat.user_features(u)
            relevant = split.relevant[u]["all"]
            rep = rep[:k]
            for ch, lst in (("repeat", [(ids[c], s) for c, s in rep]),
                            ("discovery", [(c.item_id, c.score) for c in d.candidates])):
                if not lst:
                    continue
                X = candidate_features(np.arange(len(lst)), np.array([s for _, s in lst]), feats)
                rows[ch][0].append(X)
                rows[ch][1].append(np.array([i in relevant for i, _ in lst], dtype=np.int8))
    return {ch: (np.concatenate(x) if x else np.zeros((0, 2 + len(FEATURE_NAMES))),
                 np.concatenate(y) if y else np.zeros(0, np.int8)) for ch, (x, y) in rows.items()}


def fit_logistic(X: np.ndarray, y: np.ndarray, seed: int = 42) -> tuple[Logistic, dict]:
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
                   "features": ["log1p_rank", "score_over_best", *FEATURE_NAMES],
                   "coef": [round(c, 4) for c in model.coef]}


def fit_channel_split(dataset, *, protocol: Protocol | None = None, settings: RetrievalSettings | None = None,
                      tifu: TifuParams | None = None, tags_fn=None, k: int = 50, progress: bool = False,
                      min_discovery_share: float = 0.1, root=None) -> tuple[ChannelSplit, dict]:
    """Build (or load) the validation towers, collect candidate rows and fit both channel models."""
    from evals.retrieval_eval import user_tags

    t0 = time.perf_counter()
    vsplit = make_split(dataset, validation_protocol(dataset, protocol))
    vset = (settings or RetrievalSettings()).model_copy(update={"cutoff": vsplit.cutoff})
    retriever = load_or_build_retriever(dataset, vset, progress, root=root)
    retriever.repeat = load_repeat_scores(retriever.directory, dataset, retriever.settings, retriever.config,
                                          retriever.item_ids, params=tifu)
    tags = (tags_fn or user_tags)(vsplit, dataset)
    rows = candidate_rows(retriever, vsplit, tags, k)
    models, info = {}, {}
    for ch, (X, y) in rows.items():
        models[ch], info[ch] = fit_logistic(X, y, seed=vsplit.protocol.seed)
    fitted_on = {"dataset": dataset.name, "validation_cutoff": vsplit.cutoff.isoformat(),
                 "validation_end": vsplit.end.isoformat(), "users": len(vsplit.users), "k": k,
                 "tifu": (tifu or TifuParams()).as_dict(), "towers": retriever.directory.name, "channels": info,
                 "seconds": round(time.perf_counter() - t0, 1)}
    return ChannelSplit(models=models, min_discovery_share=min_discovery_share, fitted_on=fitted_on), fitted_on


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
