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

import json
import platform
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from behavior.adapters import load_dataset
from core.logging import get_logger
from evals.baselines import item_knn, popularity, top_frequency
from evals.metrics import evaluate_lists
from evals.protocol import Protocol, Split, make_split
from evals.sasrec import SASRecConfig, sasrec_recommend, train_sasrec
from retrieval.catalogue import recent_tags_from_history
from retrieval.service import Retriever, artifact_dir, load_or_build_retriever
from retrieval.settings import RetrievalSettings

log = get_logger(__name__)

METHODS = ("popularity", "top_frequency", "item_knn", "sasrec", "intentrec_collab", "intentrec_tag",
           "intentrec_fused", "ablation_fused_sum", "ablation_fused_tag_repeats")
LABELS = {
    "popularity": "popularity",
    "top_frequency": "personal top-frequency",
    "item_knn": "item-kNN (seen excluded)",
    "sasrec": "SASRec",
    "intentrec_collab": "IntentRec collab only (β=1)",
    "intentrec_tag": "IntentRec tag only (β=0)",
    "intentrec_fused": "IntentRec fused",
    "ablation_fused_sum": "ablation: fused, summed scores (no quotas)",
    "ablation_fused_tag_repeats": "ablation: fused, tag channel may repeat",
}


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
                    chunk: int = 256) -> dict[str, list[str]]:
    users = [u for u in split.users if tags.get(u)]
    out: dict[str, list[str]] = {u: [] for u in split.users}
    for s in range(0, len(users), chunk):
        batch = users[s:s + chunk]
        res = retriever.search_batch(batch, [tags[u] for u in batch], k, beta=beta)
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


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def honest_notes(results: dict[str, dict], ks) -> tuple[dict, list[str]]:
    fused, collab = results["intentrec_fused"], results["intentrec_collab"]
    checks = {
        "fused_recall@50_>=_popularity": fused["recall@50/all"] >= results["popularity"]["recall@50/all"],
        "fused_recall@50_>=_item_knn": fused["recall@50/all"] >= results["item_knn"]["recall@50/all"],
        "fused_beats_collab_explore_recall@50": fused["recall@50/explore"] > collab["recall@50/explore"],
        "fused_beats_collab_tail@50": fused["tail@50"] > collab["tail@50"],
    }
    notes = []
    for ref in ("sasrec", "top_frequency"):
        losses = []
        for key, v in fused.items():
            r = results[ref].get(key)
            if v is None or r is None:
                continue
            if key.startswith("tail") or key.startswith("diversity") or key.startswith("coverage"):
                continue  # not accuracy figures: higher is not simply "better"
            if v < r:
                losses.append(f"{key} {v:.4f} < {r:.4f}")
        if losses:
            notes.append(f"Fused IntentRec loses to {LABELS[ref]} on {len(losses)} accuracy figures: "
                         + "; ".join(losses))
        else:
            notes.append(f"Fused IntentRec is at least {LABELS[ref]} on every accuracy figure.")
    for name, ok in checks.items():
        if not ok:
            notes.append(f"Must-show check FAILED: {name}")
    return checks, notes


def run_retrieval_eval(dataset: str = "completejourney", *, protocol: Protocol | None = None,
                       settings: RetrievalSettings | None = None, sasrec: SASRecConfig | None = None,
                       n_recent_tags: int = 10, rebuild: bool = False, progress: bool = True,
                       methods: tuple[str, ...] = METHODS, root: Path | None = None) -> dict:
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

    if "popularity" in methods:
        r = timed("popularity", lambda: popularity(split, kmax))
        lists["popularity"] = {k: r for k in ks}
    if "top_frequency" in methods:
        r = timed("top_frequency", lambda: top_frequency(split, kmax))
        lists["top_frequency"] = {k: r for k in ks}
    if "item_knn" in methods:
        r = timed("item_knn", lambda: item_knn(split, kmax))
        lists["item_knn"] = {k: r for k in ks}
    if "sasrec" in methods:
        cfg = sasrec or SASRecConfig(seed=protocol.seed)
        model, seqs, info = timed("sasrec_train", lambda: train_sasrec(split, cfg, progress=progress))
        r = timed("sasrec_rank", lambda: sasrec_recommend(model, seqs, split, kmax))
        lists["sasrec"] = {k: r for k in ks}
        extra["sasrec"] = info

    base = settings or RetrievalSettings()
    settings = base.model_copy(update={"cutoff": split.cutoff})
    b = settings.beta
    # name -> (beta, serving overrides)
    variants = {"intentrec_collab": (1.0, {}), "intentrec_tag": (0.0, {}), "intentrec_fused": (b, {}),
                "ablation_fused_sum": (b, {"merge": "sum"}),
                "ablation_fused_tag_repeats": (b, {"tag_new_items_only": False})}
    retriever = None
    if any(m in methods for m in variants):
        directory = artifact_dir(ds, settings, root)
        built_now = rebuild or not (directory / "config.json").exists()
        retriever = timed("intentrec_build_or_load",
                          lambda: load_or_build_retriever(ds, settings, progress, root=root, rebuild=rebuild))
        tags = timed("user_tags", lambda: user_tags(split, ds, n_recent_tags))
        for name, (beta, overrides) in variants.items():
            if name not in methods:
                continue
            t0 = time.perf_counter()
            r_v = retriever.with_serving(**overrides) if overrides else retriever
            lists[name] = {k: intentrec_lists(r_v, split, tags, k, beta) for k in ks}
            timings[name] = round(time.perf_counter() - t0, 2)
        extra["intentrec"] = {"directory_key": directory.name, "built_in_this_run": built_now,
                              "train": retriever.config["train"], "build_seconds": retriever.config["build_seconds"],
                              "n_recent_tags": n_recent_tags,
                              "example_tags": {u: tags.get(u, []) for u in split.users[:3]},
                              "text_embedding_seconds": retriever.config.get("text_embedding_seconds"),
                              "n_item_texts": retriever.config.get("n_item_texts")}

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
    checks, notes = ({}, [])
    if all(m in results for m in ("intentrec_fused", "intentrec_collab", "popularity", "item_knn",
                                  "sasrec", "top_frequency")):
        checks, notes = honest_notes(results, ks)
    import faiss
    import torch
    return {
        "dataset": dataset,
        "protocol": protocol.as_dict() | {"cutoff_used": split.cutoff.isoformat(), "test_end": split.end.isoformat()},
        "split": split.stats,
        "seeds": {"protocol": protocol.seed, "towers": settings.seed,
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
    for name, ok in report.get("checks", {}).items():
        console.print(f"  {'[green]PASS[/]' if ok else '[red]FAIL[/]'} {name}")
    for n in report.get("notes", []):
        console.print(f"  • {n}")


def write_report(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    return path
