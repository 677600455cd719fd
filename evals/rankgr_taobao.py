"""``python -m evals.rankgr_taobao``: SASRec and the three RankGR rows on the Taobao sample.

Split (the sample covers 2017-11-24..12-03): T = 2017-12-01, a 3-day test window, target behaviour
``buy`` (``purchase``), users with at least one buy before T and one in the window; every behaviour
before T (pv, cart, fav, buy) is training input. Item vectors: truncated SVD of user x item plus a
category embedding unless a tower build for the cutoff is cached (``evals.retrieval_eval.rankgr_vectors``). ``--tune-mix`` instead trains the full model on the
validation split (T moved back one window) and picks the RSP / NTP mixing weight there;
``--dataset completejourney`` runs the same on completejourney's calibrated split."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from behavior.adapters import load_dataset
from core.paths import data_dir
from evals.baselines import popularity
from evals.metrics import evaluate_lists
from evals.protocol import Protocol, make_split, validation_protocol
from evals.retrieval_eval import rankgr_vectors
from evals.sasrec import SASRecConfig, sasrec_recommend, train_sasrec
from retrieval.generative import RankGRConfig
from retrieval.generative.runner import ROWS, choose_mix, run_rankgr_rows
from retrieval.generative.train import train_rankgr
from retrieval.settings import RetrievalSettings

TAOBAO = {"cutoff": datetime(2017, 12, 1), "window_days": 3, "min_train_events": 1}


def protocol_for(dataset: str, ks: tuple[int, ...]) -> Protocol:
    extra = TAOBAO if dataset.startswith("taobao") else {}
    return Protocol(target_behaviors=("purchase",), ks=ks, **extra)


def _metrics(lists, split, ks):
    return evaluate_lists(lists, split.relevant, list(ks), split.category_of, split.head, len(split.catalogue))


def run(dataset: str, ks: tuple[int, ...], cfg: RankGRConfig, sasrec: SASRecConfig, progress: bool) -> dict:
    t0 = time.perf_counter()
    ds = load_dataset(dataset)
    protocol = protocol_for(dataset, ks)
    split = make_split(ds, protocol)
    k = max(ks)
    lists, timings = {"popularity": popularity(split, k)}, {}
    t = time.perf_counter()
    model, seqs, sas_info = train_sasrec(split, sasrec, progress=progress)
    lists["sasrec"] = sasrec_recommend(model, seqs, split, k)
    timings["sasrec"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    vecs = rankgr_vectors(ds, split, RetrievalSettings())
    timings["rankgr_vectors"] = round(time.perf_counter() - t, 2)
    r, info = run_rankgr_rows(split, vecs, list(ROWS), k, cfg, progress=progress)
    lists |= r
    return {"dataset": dataset, "protocol": protocol.as_dict() | {"test_end": split.end.isoformat()},
            "split": split.stats, "results": {m: _metrics(v, split, ks) for m, v in lists.items()},
            "rankgr": info | {"vectors": vecs.source}, "sasrec": sas_info, "timings_s": timings,
            "total_seconds": round(time.perf_counter() - t0, 2)}


def tune_mix(dataset: str, ks: tuple[int, ...], cfg: RankGRConfig, progress: bool) -> dict:
    ds = load_dataset(dataset)
    vp = validation_protocol(ds, protocol_for(dataset, ks))
    split = make_split(ds, vp)
    vecs = rankgr_vectors(ds, split, RetrievalSettings())
    k = max(ks)
    model, info = train_rankgr(split, vecs, cfg, progress=progress)
    res = choose_mix(model, split, k, lambda lists: _metrics(lists, split, (k,))[f"recall@{k}/all"])
    return {"dataset": dataset, "validation_cutoff": vp.cutoff.isoformat(), "metric": f"recall@{k}/all",
            "vectors": vecs.source, "split": split.stats} | res | {"train": info}


def render(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    ks = report["protocol"]["ks"]
    s = report["split"]
    t = Table(title=f"{report['dataset']}: T {report['protocol']['cutoff'][:10]}, {report['protocol']['window_days']}-day "
                    f"window, {s['n_users']} users, {s['n_test_items']} test items, target purchase")
    t.add_column("method")
    cols = [f"{m}@{k}/all" for k in ks for m in ("recall", "ndcg", "hit")]
    for c in cols:
        t.add_column(c, justify="right")
    for m, r in report["results"].items():
        t.add_row(m, *[f"{r[c]:.4f}" if r[c] is not None else "–" for c in cols])
    Console(width=160).print(t)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m evals.rankgr_taobao", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="taobao")
    p.add_argument("--ks", default="10,50")
    p.add_argument("--ntp-epochs", type=int)
    p.add_argument("--iap-epochs", type=int)
    p.add_argument("--beam", type=int)
    p.add_argument("--lam", type=int)
    p.add_argument("--mix", type=float)
    p.add_argument("--alpha", type=float)
    p.add_argument("--sasrec-epochs", type=int, default=10)
    p.add_argument("--threads", type=int)
    p.add_argument("--tune-mix", action="store_true", help="choose the mixing weight on the validation split")
    p.add_argument("--out", help="JSON report path (default: <data dir>/evals/rankgr-<dataset>[-tune].json)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    ks = tuple(int(x) for x in a.ks.split(","))
    over = {f: getattr(a, f) for f in ("ntp_epochs", "iap_epochs", "beam", "lam", "mix", "alpha", "threads")
            if getattr(a, f) is not None}
    cfg = replace(RankGRConfig(), **over)
    if a.tune_mix:
        report = tune_mix(a.dataset, ks, cfg, not a.no_progress)
        print(json.dumps({k: v for k, v in report.items() if k != "train"}, indent=1))
    else:
        report = run(a.dataset, ks, cfg, SASRecConfig(epochs=a.sasrec_epochs), not a.no_progress)
        render(report)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in a.dataset)
    out = Path(a.out or data_dir() / "evals" / f"rankgr-{safe}{'-tune' if a.tune_mix else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    print(f"report written to {out}")


if __name__ == "__main__":
    main()
