"""One ``batch --workers`` process (``python -m batch.worker``; see ``batch.workers``)."""

from __future__ import annotations

import argparse
import json

from batch.runner import BatchSpec, build_rec, run_local
from runlog.batches import BatchStore
from runlog.store import RunLog


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m batch.worker")
    ap.add_argument("--runlog", required=True)
    ap.add_argument("--batch", required=True)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--durability", choices=("full", "normal"), default="full")
    args = ap.parse_args(argv)
    store = RunLog(args.runlog, durability=args.durability)
    batches = BatchStore(store)
    info = batches.get(args.batch)
    spec = BatchSpec.model_validate(info["spec"])
    rec = build_rec(spec, store, n_threads=args.threads)
    total = {"done": 0, "failed": 0, "skipped": 0}
    while True:  # passes until one claims nothing: users a dead worker left are pending again
        users = batches.pending_users(info["batch_id"])
        if not users:
            break
        out = run_local(rec, batches, info["batch_id"], users, spec, concurrency=args.concurrency)
        for k, v in out.items():
            total[k] += v
        if out["done"] + out["failed"] == 0:
            break
    print(json.dumps(total))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
