"""``app.py eval retrieval``: one run, one split, every method, plus the speed figures.

Methods (all on the same :class:`evals.protocol.Split`, full ranking over the catalogue):

* baselines: popularity, personal top-frequency, item-kNN (seen excluded), SASRec;
* IntentRec variants of the same trained retriever (built "as of" the cutoff):
  collaborative only (β=1), tag only (β=0), fused (β=0.6 or the setting); and two ablations of the
  fused variant: summed scores without quotas (``merge="sum"``), and a tag channel allowed to return
  items the user already bought (``tag_new_items_only=False``). Until LLM tags exist, each
  user's tags are the category tags of their 10 most recent distinct categories before T
  (``retrieval.catalogue.recent_tags_from_history``). Each K is its own ``search(k=K)`` call,
  because quotas depend on k.

Speed, measured in the same run: FAISS exact search at k=100 for the evaluated users' vectors against
a brute-force numpy matrix product + ``argpartition`` on the same vectors (same thread count), and the
towers' training samples/s from the build (``built_in_this_run`` says whether the build happened in
this run or was loaded from the cache; ``--rebuild`` forces it).

The output states the issue's must-show checks as booleans and lists, with numbers, every figure on
which fused IntentRec loses to SASRec or to personal top-frequency. Nothing here tunes the split.
"""

from __future__ import annotations

import copy
import json
import platform
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from behavior.adapters import load_dataset
from core.logging import get_logger
from evals.baselines import item_knn, popularity, tifu_knn, top_frequency
from evals.channel_split_fit import fit_channel_split
from evals.metrics import evaluate_lists
from evals.protocol import Protocol, Split, make_split, validation_protocol
from evals.sasrec import SASRecConfig, sasrec_recommend, train_sasrec
from evals.tifu_tuning import tune
from retrieval.catalogue import recent_tags_from_history
from retrieval.channel_split import ChannelSplit
from retrieval.generative import ItemVectors, RankGRConfig, collaborative_vectors, tower_vectors
from retrieval.generative.runner import ROWS as RANKGR_ROWS
from retrieval.generative.runner import run_rankgr_rows
from retrieval.interests import InterestChannel
from retrieval.repeat import TifuParams
from retrieval.service import (
    Retriever,
    artifact_dir,
    load_channel_split,
    load_or_build_retriever,
)
from retrieval.settings import RetrievalSettings

log = get_logger(__name__)

METHODS = ("popularity", "top_frequency", "tifu_knn", "item_knn", "sasrec", "intentrec_collab", "intentrec_tag",
           "intentrec_fused", "ablation_no_repeat_channel", "ablation_split_repeats_first", "ablation_fused_sum",
           "ablation_fused_tag_repeats", "discovery_collab", "discovery_fused", "hisac", "ablation_hisac_hard",
           "ablation_hisac_kmeans_ids", "ablation_hisac_all_agents", "rankgr", "ablation_rankgr_no_iap",
           "ablation_rankgr_no_rsp")
LABELS = {
    "popularity": "popularity",
    "top_frequency": "personal top-frequency",
    "tifu_knn": "TIFU-KNN",
    "item_knn": "item-kNN (seen excluded)",
    "sasrec": "SASRec",
    "intentrec_collab": "IntentRec user channel only (β=1, no repeat channel)",
    "intentrec_tag": "IntentRec tag only (β=0)",
    "intentrec_fused": "IntentRec fused (served: repeat channel + fused discovery)",
    "ablation_no_repeat_channel": "ablation: fused user/tag channels only (no repeat channel)",
    "ablation_split_repeats_first": "ablation: repeat channel, no split model (repeats first)",
    "ablation_fused_sum": "ablation: no repeat channel, summed scores (no quotas)",
    "ablation_fused_tag_repeats": "ablation: no repeat channel, tag channel may repeat",
    "discovery_collab": "discovery: user tower, seen excluded (single vector)",
    "discovery_fused": "discovery: fused user/tag, seen excluded",
    "hisac": "discovery: HiSAC agents (voting, soft routing, IDs from the category tree where there is one)",
    "ablation_hisac_hard": "ablation: HiSAC, hard routing",
    "ablation_hisac_kmeans_ids": "ablation: HiSAC, semantic IDs from residual k-means only",
    "ablation_hisac_all_agents": "ablation: HiSAC, no voting (all agents)",
    "rankgr": "RankGR (generative retrieval over semantic IDs: NTP + listwise DPO, RSP re-ranking)",
    "ablation_rankgr_no_iap": "ablation: RankGR without IAP (NTP only)",
    "ablation_rankgr_no_rsp": "ablation: RankGR without RSP (ranked by NTP log-prob)",
}
DISCOVERY = ("discovery_collab", "discovery_fused", "hisac", "ablation_hisac_hard", "ablation_hisac_kmeans_ids",
             "ablation_hisac_all_agents")


def user_tags(split: Split, dataset, n: int = 10, level: str = "category") -> dict[str, list[str]]:
    """Bootstrap tags of each evaluated user's ``n`` most recent distinct categories before the cutoff."""
    h = (split.train.filter(pl.col("user_id").is_in(split.users))
         .join(dataset.items.select("item_id", "category", "category_path"), on="item_id", how="left")
         .sort(["user_id", "ts"]))
    out = {}
    for (u,), g in h.group_by(["user_id"], maintain_order=True):
        out[u] = recent_tags_from_history(g, n=n, level=level)
    return out


def intentrec_lists(retriever: Retriever, split: Split, tags: dict[str, list[str]], k: int, beta: float,
                    chunk: int = 256, exclude_seen: bool = False) -> dict[str, list[str]]:
    users = [u for u in split.users if tags.get(u)]
    out: dict[str, list[str]] = {u: [] for u in split.users}
    for s in range(0, len(users), chunk):
        batch = users[s:s + chunk]
        excl = [set(split.train_counts[u]) for u in batch] if exclude_seen else None
        res = retriever.search_batch(batch, [tags[u] for u in batch], k, beta=beta, exclude_items=excl)
        for u, r in zip(batch, res, strict=True):
            out[u] = [c.item_id for c in r.candidates]
    return out


def speed_benchmark(retriever: Retriever, users: list[str], k: int = 100, repeats: int = 3) -> dict:
    import faiss

    q = np.stack([retriever.user_vector(u) for u in users if retriever.knows_user(u)]).astype(np.float32)
    V = retriever.item_vecs
    best_f, best_n = float("inf"), float("inf")
    ids_f = ids_n = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, ids_f = retriever.index.search(q, k)
        best_f = min(best_f, time.perf_counter() - t0)
        t0 = time.perf_counter()
        ids_n = _numpy_topk(q, V, k)
        best_n = min(best_n, time.perf_counter() - t0)
    agree = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids_f, ids_n, strict=True)]))
    return {"k": k, "queries": int(len(q)), "n_items": int(len(V)), "dim": int(V.shape[1]),
            "faiss_index": "IndexIDMap2(IndexFlatIP), exact", "faiss_threads": faiss.omp_get_max_threads(),
            "faiss_qps": round(len(q) / best_f, 1), "numpy_qps": round(len(q) / best_n, 1),
            "faiss_seconds": round(best_f, 4), "numpy_seconds": round(best_n, 4),
            "top_k_overlap": round(agree, 4), "repeats": repeats}


def _numpy_topk(q: np.ndarray, V: np.ndarray, k: int, chunk: int = 512) -> np.ndarray:
    out = []
    for s in range(0, len(q), chunk):
        sc = q[s:s + chunk] @ V.T
        part = np.argpartition(-sc, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sc, part, axis=1), axis=1)
        out.append(np.take_along_axis(part, order, axis=1))
    return np.concatenate(out)


def hisac_stats(channel: InterestChannel, split: Split, n_examples: int = 3) -> dict:
    """Agents per user and the compression ratio (purchase events before T ÷ agents), voting on."""
    n_agents, n_events = [], []
    for u in split.users:
        n_agents.append(len(channel.agents(u)))
        n_events.append(sum(split.train_counts[u].values()))
    mean_agents = float(np.mean(n_agents)) if n_agents else 0.0
    return {"semantic_ids": channel.ids, "levels": list(channel.sids.levels), "agents_per_user": round(mean_agents, 3),
            "history_events_per_user": round(float(np.mean(n_events)), 1) if n_events else 0.0,
            "compression_ratio": round(float(np.mean(n_events)) / mean_agents, 1) if mean_agents else None,
            "max_agents": channel.max_agents, "top_parents": channel.top_parents,
            "top_children": channel.top_children, "temperature": channel.temperature,
            "example_agents": {u: [vars(a) for a in channel.describe(u)] for u in split.users[:n_examples]}}


def rankgr_vectors(ds, split: Split, settings: RetrievalSettings, root: Path | None = None) -> ItemVectors:
    """Item-tower vectors when a build for the split's cutoff is cached, else SVD + category vectors."""
    directory = artifact_dir(ds, settings.model_copy(update={"cutoff": split.cutoff}), root)
    if (directory / "config.json").exists():
        return tower_vectors(Retriever.load(directory))
    return collaborative_vectors(split.train, split.category_of, seed=split.protocol.seed)


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def paired_counts(a: dict[str, list[str]], b: dict[str, list[str]], split: Split, k: int,
                  part: str = "all") -> dict[str, int]:
    """Users on which method a's Recall@k beats, loses to or ties method b's (users with a non-empty ``part``)."""
    from evals.metrics import recall_at_k

    out = {"wins": 0, "losses": 0, "ties": 0}
    for u in split.users:
        rel = split.relevant[u][part]
        if not rel:
            continue
        ra, rb = recall_at_k(a.get(u, []), rel, k), recall_at_k(b.get(u, []), rel, k)
        out["wins" if ra > rb else "losses" if ra < rb else "ties"] += 1
    return out


def honest_notes(results: dict[str, dict], lists: dict | None = None, split: Split | None = None) -> tuple[dict, list[str]]:
    """The issue's must-show checks as booleans, with every number behind them in the notes, and the
    accuracy figures on which the served list loses to TIFU-KNN or personal top-frequency."""
    f, t, tf = results["intentrec_fused"], results["tifu_knn"], results["top_frequency"]
    disc = {m: results[m]["recall@50/explore"] for m in DISCOVERY if m in results}
    best_disc = max(disc, key=disc.get) if disc else None
    knn = results.get("item_knn", {}).get("recall@50/explore")
    checks = {
        "fused_recall@50_>=_tifu_knn": f["recall@50/all"] >= t["recall@50/all"],
        "fused_recall@50_>=_top_frequency": f["recall@50/all"] >= tf["recall@50/all"],
        "fused_ndcg@10_>=_tifu_knn": f["ndcg@10/all"] >= t["ndcg@10/all"],
        "fused_explore_recall@50_>=_3x_tifu_knn": f["recall@50/explore"] >= 3 * t["recall@50/explore"],
        "fused_tail@50_>_tifu_knn": f["tail@50"] > t["tail@50"],
    }
    if best_disc and knn is not None:
        checks["best_discovery_explore_recall@50_>=_item_knn"] = disc[best_disc] >= knn
    notes = [
        f"Recall@50/all: fused {f['recall@50/all']:.4f}, TIFU-KNN {t['recall@50/all']:.4f}, "
        f"top-frequency {tf['recall@50/all']:.4f}; NDCG@10/all: fused {f['ndcg@10/all']:.4f}, "
        f"TIFU-KNN {t['ndcg@10/all']:.4f}",
        f"Recall@50/explore: fused {f['recall@50/explore']:.4f} = "
        f"{f['recall@50/explore'] / max(t['recall@50/explore'], 1e-12):.1f}x TIFU-KNN's {t['recall@50/explore']:.4f}; "
        f"tail@50 fused {f['tail@50']:.4f} vs TIFU-KNN {t['tail@50']:.4f}",
    ]
    if best_disc and knn is not None:
        notes.append(f"Best discovery channel: {LABELS[best_disc]} Recall@50/explore {disc[best_disc]:.4f} vs "
                     f"item-kNN {knn:.4f}")
    if lists is not None and split is not None:
        for ref in ("tifu_knn", "top_frequency"):
            for part in ("all", "explore"):
                pc = paired_counts(lists["intentrec_fused"][50], lists[ref][50], split, 50, part)
                notes.append(f"Paired Recall@50/{part}, fused vs {LABELS[ref]}: better for {pc['wins']} users, "
                             f"worse for {pc['losses']}, tied for {pc['ties']}")
    for ref in ("tifu_knn", "top_frequency", "sasrec"):
        if ref not in results:
            continue
        losses = [f"{key} {v:.4f} < {results[ref][key]:.4f}" for key, v in f.items()
                  if key.split("@")[0] in ("recall", "ndcg", "hit") and v is not None
                  and results[ref].get(key) is not None and v < results[ref][key]]
        notes.append(f"Fused loses to {LABELS[ref]} on {len(losses)} accuracy figures" +
                     (": " + "; ".join(losses) if losses else ""))
    for name, ok in checks.items():
        if not ok:
            notes.append(f"Must-show check FAILED: {name}")
    return checks, notes


def run_retrieval_eval(dataset: str = "completejourney", *, protocol: Protocol | None = None,
                       settings: RetrievalSettings | None = None, sasrec: SASRecConfig | None = None,
                       n_recent_tags: int = 10, rebuild: bool = False, progress: bool = True,
                       methods: tuple[str, ...] = METHODS, root: Path | None = None, tifu: TifuParams | None = None,
                       tune_tifu: bool = False, split_model: ChannelSplit | None = None,
                       rankgr: RankGRConfig | None = None) -> dict:
    """Every method on one split. TIFU-KNN's parameters (also the repeat channel's) are ``tifu``, else
    chosen on the validation split in this run with ``tune_tifu``, else ``TifuParams()`` (chosen there
    before). The channel split model is ``split_model``, else fitted on the validation split in this run
    (towers built as of the validation cutoff, cached like any build)."""
    t_run = time.perf_counter()
    protocol = protocol or Protocol()
    ds = load_dataset(dataset)
    split = make_split(ds, protocol)
    ks = list(protocol.ks)
    kmax = max(ks)
    timings: dict[str, float] = {}
    lists: dict[str, dict[int, dict[str, list[str]]]] = {}
    extra: dict[str, dict] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        r = fn()
        timings[name] = round(time.perf_counter() - t0, 2)
        return r

    tifu_source = "given" if tifu else "TifuParams() defaults (chosen by evals/tifu_tuning.py on validation)"
    if tifu is None and tune_tifu:
        tuned = timed("tifu_tuning", lambda: tune(make_split(ds, validation_protocol(ds, protocol)), log=log.info))
        tifu, tifu_source = TifuParams(**tuned["best"]), f"tuned in this run on {tuned['validation_cutoff'][:10]}"
        extra["tifu_tuning"] = {k: v for k, v in tuned.items() if k != "rows"}
    tifu = tifu or TifuParams()
    extra["tifu"] = {"params": tifu.as_dict(), "source": tifu_source}

    if "popularity" in methods:
        r = timed("popularity", lambda: popularity(split, kmax))
        lists["popularity"] = {k: r for k in ks}
    if "top_frequency" in methods:
        r = timed("top_frequency", lambda: top_frequency(split, kmax))
        lists["top_frequency"] = {k: r for k in ks}
    if "tifu_knn" in methods:
        r = timed("tifu_knn", lambda: tifu_knn(split, kmax, tifu))
        lists["tifu_knn"] = {k: r for k in ks}
    if "item_knn" in methods:
        r = timed("item_knn", lambda: item_knn(split, kmax))
        lists["item_knn"] = {k: r for k in ks}
    if "sasrec" in methods:
        cfg = sasrec or SASRecConfig(seed=protocol.seed)
        model, seqs, info = timed("sasrec_train", lambda: train_sasrec(split, cfg, progress=progress))
        r = timed("sasrec_rank", lambda: sasrec_recommend(model, seqs, split, kmax))
        lists["sasrec"] = {k: r for k in ks}
        extra["sasrec"] = info
    rankgr_rows = [m for m in RANKGR_ROWS if m in methods]
    if rankgr_rows:  # trained on this split's rows before T; settings chosen on the validation split
        vecs = timed("rankgr_vectors", lambda: rankgr_vectors(ds, split, settings or RetrievalSettings(), root))
        cfg = rankgr or RankGRConfig(seed=protocol.seed)
        r, info = timed("rankgr", lambda: run_rankgr_rows(split, vecs, rankgr_rows, kmax, cfg, progress=progress))
        for name in rankgr_rows:
            lists[name] = {k: r[name] for k in ks}
            timings[name] = info[name]["train"]["train_seconds"] + info[name]["decode"]["recommend_seconds"]
        extra["rankgr"] = info | {"vectors": vecs.source}

    base = settings or RetrievalSettings()
    settings = base.model_copy(update={"cutoff": split.cutoff})
    b = settings.beta
    no_rep = {"repeat_channel": False}
    # name -> (beta, serving overrides, exclude the user's bought items)
    variants = {"intentrec_collab": (1.0, no_rep, False), "intentrec_tag": (0.0, no_rep, False),
                "intentrec_fused": (b, {}, False), "ablation_no_repeat_channel": (b, no_rep, False),
                "ablation_split_repeats_first": (b, {}, False),
                "ablation_fused_sum": (b, no_rep | {"merge": "sum"}, False),
                "ablation_fused_tag_repeats": (b, no_rep | {"tag_new_items_only": False}, False),
                "discovery_collab": (1.0, no_rep, True), "discovery_fused": (b, no_rep, True)}
    hisac_variants = {"hisac": ("soft", True), "ablation_hisac_hard": ("hard", True),
                      "ablation_hisac_kmeans_ids": ("soft", True),
                      "ablation_hisac_all_agents": ("soft", False)}
    retriever = None
    if any(m in methods for m in (*variants, *hisac_variants)):
        directory = artifact_dir(ds, settings, root)
        built_now = rebuild or not (directory / "config.json").exists()
        retriever = timed("intentrec_build_or_load",
                          lambda: load_or_build_retriever(ds, settings, progress, root=root, rebuild=rebuild))
        timed("repeat_scores", lambda: retriever.use_tifu(ds, tifu))
        tags = timed("user_tags", lambda: user_tags(split, ds, n_recent_tags))
        split_source = "given"
        if split_model is None and ("intentrec_fused" in methods):
            split_model, fit_info = timed("channel_split_fit", lambda: fit_channel_split(
                ds, protocol=protocol, settings=base, tifu=tifu, progress=progress, root=root))
            split_source = "fitted in this run on the validation split"
            extra["channel_split"] = fit_info
        retriever.split = split_model or load_channel_split(retriever.settings)
        extra["channel_split_model"] = retriever.split.as_dict()
        extra["channel_split_source"] = split_source if split_model else "packaged default"
        fixed = ChannelSplit.fallback(retriever.split.min_discovery_share)
        for name, (beta, overrides, excl) in variants.items():
            if name not in methods:
                continue
            t0 = time.perf_counter()
            r_v = retriever.with_serving(**overrides) if overrides else copy.copy(retriever)
            if name == "ablation_split_repeats_first":
                r_v.split = fixed
            lists[name] = {k: intentrec_lists(r_v, split, tags, k, beta, exclude_seen=excl) for k in ks}
            timings[name] = round(time.perf_counter() - t0, 2)
        if any(m in methods for m in hisac_variants):
            channel = timed("hisac_semantic_ids", lambda: InterestChannel(retriever))
            kmeans = (timed("hisac_semantic_ids_kmeans", lambda: InterestChannel(retriever, ids="kmeans"))
                      if "ablation_hisac_kmeans_ids" in methods else None)
            for name, (routing, voting) in hisac_variants.items():
                if name not in methods:
                    continue
                t0 = time.perf_counter()
                ch = kmeans if name == "ablation_hisac_kmeans_ids" else channel
                res = {u: ch.search(u, kmax, routing=routing, voting=voting) for u in split.users}
                lists[name] = {k: {u: [c.item_id for c in r.candidates] for u, r in res.items()} for k in ks}
                timings[name] = round(time.perf_counter() - t0, 2)
            extra["hisac"] = hisac_stats(channel, split)
        extra["intentrec"] = {"directory_key": directory.name, "built_in_this_run": built_now,
                              "train": retriever.config["train"], "build_seconds": retriever.config["build_seconds"],
                              "n_recent_tags": n_recent_tags,
                              "example_tags": {u: tags.get(u, []) for u in split.users[:3]},
                              "text_embedding_seconds": retriever.config.get("text_embedding_seconds"),
                              "n_item_texts": retriever.config.get("n_item_texts")}
        if "intentrec_fused" in lists:
            fl = lists["intentrec_fused"]
            extra["served_split"] = {f"repeat_share@{k}": round(float(np.mean(
                [sum(i in split.train_counts[u] for i in fl[k][u]) / max(len(fl[k][u]), 1) for u in split.users])), 4)
                for k in ks}

    results: dict[str, dict] = {}
    for name in (m for m in METHODS if m in lists):
        merged: dict = {}
        for k in ks:
            merged.update(evaluate_lists(lists[name][k], split.relevant, [k], split.category_of, split.head,
                                         len(split.catalogue)))
        results[name] = merged

    speed = {}
    if retriever is not None:
        speed = timed("speed", lambda: speed_benchmark(retriever, split.users, k=100))
        speed["train_samples_per_s"] = retriever.config["train"]["samples_per_s"]
        speed["train_samples_per_s_built_in_this_run"] = extra["intentrec"]["built_in_this_run"]
        speed["train_threads"] = settings.num_threads or "torch default"
        speed["build_seconds"] = retriever.config["build_seconds"]
        for key, name in (("tifu_knn_seconds", "tifu_knn"), ("repeat_scores_seconds", "repeat_scores"),
                          ("semantic_ids_seconds", "hisac_semantic_ids")):
            speed[key] = timings.get(name)
    checks, notes = ({}, [])
    if all(m in results for m in ("intentrec_fused", "tifu_knn", "top_frequency")):
        checks, notes = honest_notes(results, lists if 50 in ks else None, split if 50 in ks else None)
    import faiss
    import torch
    return {
        "dataset": dataset,
        "protocol": protocol.as_dict() | {"cutoff_used": split.cutoff.isoformat(), "test_end": split.end.isoformat()},
        "split": split.stats,
        "seeds": {"protocol": protocol.seed, "towers": settings.seed, "semantic_ids": settings.seed,
                  "sasrec": extra.get("sasrec", {}).get("config", {}).get("seed")},
        "retrieval_settings": settings.model_dump(mode="json"),
        "methods": {m: LABELS[m] for m in results},
        "results": results,
        "checks": checks,
        "notes": notes,
        "speed": speed,
        "timings_s": timings | {"total": round(time.perf_counter() - t_run, 2)},
        "details": extra,
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "torch_threads": torch.get_num_threads(), "faiss": faiss.__version__,
                        "machine": platform.machine(), "run_at": datetime.now().isoformat(timespec="seconds")},
    }


def render(report: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    # 13 columns do not fit 80: never let rich squeeze them to "0.…" when output is piped
    console = console or Console(width=max(Console().width, 180))
    ks = report["protocol"]["ks"]
    s = report["split"]
    console.print(f"[bold]Retrieval evaluation[/] on {report['dataset']}: cutoff {report['protocol']['cutoff_used'][:10]}, "
                  f"{report['protocol']['window_days']}-day window, {s['n_users']} users, "
                  f"{s['n_test_items']} test items ({s['repeat_share']:.0%} repeats); seeds {report['seeds']}")
    for k in ks:
        t = Table(title=f"K = {k} (full ranking over {s['catalogue_size']} items)", show_lines=False)
        t.add_column("method")
        cols = [(f"recall@{k}/{sp}", f"R {sp[:3]}") for sp in ("all", "repeat", "explore")]
        cols += [(f"ndcg@{k}/{sp}", f"NDCG {sp[:3]}") for sp in ("all", "repeat", "explore")]
        cols += [(f"hit@{k}/{sp}", f"HR {sp[:3]}") for sp in ("all", "repeat", "explore")]
        cols += [(f"diversity@{k}", "cat div"), (f"tail@{k}", "tail"), (f"coverage@{k}", "cover")]
        for _, h in cols:
            t.add_column(h, justify="right")
        for m, r in report["results"].items():
            t.add_row(report["methods"][m], *[_fmt(r[c]) for c, _ in cols])
        console.print(t)
    sp = report.get("speed") or {}
    if sp:
        console.print(f"[bold]Speed[/]: FAISS exact k={sp['k']}: {sp['faiss_qps']:.0f} QPS vs numpy matmul "
                      f"{sp['numpy_qps']:.0f} QPS ({sp['queries']} queries, {sp['n_items']} items, dim {sp['dim']}, "
                      f"overlap {sp['top_k_overlap']:.3f}); tower training {sp['train_samples_per_s']:.0f} samples/s"
                      + ("" if sp.get("train_samples_per_s_built_in_this_run") else " (from the cached build)"))
    d = report.get("details", {})
    if "tifu" in d:
        console.print(f"[bold]TIFU-KNN / repeat channel[/]: {d['tifu']['params']} ({d['tifu']['source']})")
    if "served_split" in d:
        console.print(f"[bold]Served list[/]: share of repeats {d['served_split']}; channel split model: "
                      f"{d.get('channel_split_source')}")
    if "hisac" in d:
        h = d["hisac"]
        console.print(f"[bold]HiSAC[/]: levels {h['levels']}, {h['agents_per_user']:.2f} agents per user, "
                      f"{h['history_events_per_user']:.0f} purchase events per user: compression ratio "
                      f"{h['compression_ratio']}")
    if "rankgr" in d and "rankgr" in d["rankgr"]:
        g = d["rankgr"]["rankgr"]["decode"]
        console.print(f"[bold]RankGR[/]: beam {g['beam']}, λ {g['lam']}, invalid SIDs {g['invalid_rate']:.4f}, "
                      f"{g['users_per_s']} users/s batched, {g['decode_cost']['ms_per_user_batch1']} ms/user "
                      f"one at a time (beam {g['decode_cost']['beam']}); popularity fill {g['popularity_fill']}")
    for name, ok in report.get("checks", {}).items():
        console.print(f"  {'[green]PASS[/]' if ok else '[red]FAIL[/]'} {name}")
    for n in report.get("notes", []):
        console.print(f"  • {n}")


def write_report(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    return path
