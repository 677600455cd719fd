"""The evaluation rows (full model and the two ablations), decode-cost timing, and the validation
choice of the RSP / NTP mixing weight. Metrics come in as a callable, so this stays below ``evals``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from retrieval.generative.config import RankGRConfig
from retrieval.generative.recommend import decode, rank, rankgr_recommend
from retrieval.generative.train import RankGR, SplitLike, train_rankgr
from retrieval.generative.vectors import ItemVectors

ROWS: dict[str, dict] = {"rankgr": {}, "ablation_rankgr_no_iap": {"iap": False},
                         "ablation_rankgr_no_rsp": {"rsp": False}}

Lists = dict[str, list[str]]


def decode_cost(model: RankGR, split: SplitLike, *, beam: int = 50, n_users: int = 32) -> dict:
    """Milliseconds per user decoding one user at a time at ``beam`` (lambda = beam)."""
    users = list(split.users)[:n_users]
    seqs = model.histories(split)
    t0 = time.perf_counter()
    for u in users:
        decode(model, seqs, [u], beam=beam, lam=beam, batch=1)
    ms = 1000 * (time.perf_counter() - t0) / max(len(users), 1)
    return {"beam": beam, "users": len(users), "ms_per_user_batch1": round(ms, 2)}


def run_rankgr_rows(split: SplitLike, vectors: ItemVectors, names: Iterable[str], k: int,
                    config: RankGRConfig | None = None, *, progress: bool = True) -> tuple[dict[str, Lists], dict]:
    """Train and decode each named row of :data:`ROWS` on ``split``; lists of ``k`` and an info dict
    per row (training log, decode stats; decode cost at beam 50 for the full model)."""
    config = config or RankGRConfig()
    lists, info = {}, {}
    for name in names:
        model, train_info = train_rankgr(split, vectors, replace(config, **ROWS[name]), progress=progress)
        stats: dict = {}
        t0 = time.perf_counter()
        lists[name] = rankgr_recommend(model, split, k, stats=stats)
        stats["recommend_seconds"] = round(time.perf_counter() - t0, 2)
        if name == "rankgr":
            stats["decode_cost"] = decode_cost(model, split) | {
                "users_per_s_batched": stats["users_per_s"], "batch": stats["batch"], "beam_batched": stats["beam"]}
        info[name] = {"train": train_info, "decode": stats}
    return lists, info


def choose_mix(model: RankGR, split: SplitLike, k: int, metric: Callable[[Lists], float],
               grid: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0), lams: Sequence[int] = (50, 100)) -> dict:
    """Decode the split's users once at beam ``max(lams)``, rank with every (lambda, mixing weight),
    keep the best by ``metric`` (use a validation split). Also reports NTP log-prob ranking alone."""
    users = list(split.users)
    top = max(lams)
    dec = decode(model, model.histories(split), users, beam=top, lam=top)
    scores = {}
    for lam in lams:
        cut = replace(dec, codes=dec.codes[:, :lam], log_probs=dec.log_probs[:, :lam],
                      rsp=None if dec.rsp is None else dec.rsp[:, :lam])
        for m in grid:
            scores[f"lam={lam},mix={m}"] = (lam, m, metric(rank(model, cut, users, k, mix=m)[0]))
    ntp_only = metric(rank(model, replace(dec, rsp=None), users, k)[0])
    lam, mix, best = max(scores.values(), key=lambda t: (t[2], -t[0], -t[1]))
    return {"best": {"lam": lam, "mix": mix, "score": best}, "scores": {key: v[2] for key, v in scores.items()},
            "ntp_only": ntp_only, "decode": dec.stats}
