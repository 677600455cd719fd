"""``batch --workers N``: N processes over one batch in one run log, each with its own model.

The embedded llama.cpp model serialises its calls, so threads in one process cannot use more cores
than llama.cpp's own threads do. Separate processes can: each loads its own model with
``cores // N`` llama.cpp threads and runs users with its own ``--concurrency``.

* **Coordination is the run log.** Every worker walks the batch's pending users and claims each one
  with ``BatchStore.claim`` (one SQLite transaction, pending → running), so a user is run by exactly
  one worker; a claim that fails means another worker has it. A worker makes passes until one
  claims nothing.
* **A dead worker loses nothing.** When a worker exits abnormally (SIGKILL, out of memory), the
  parent settles the items it left ``running`` (``BatchStore.reconcile``: its process is gone, so
  an unfinished run goes back to ``pending``) and starts a replacement while users are pending, at
  most ``max_restarts`` times. The killed run stays in the log, marked ``incomplete``.
* Workers are ``python -m batch.worker`` subprocesses: killable one by one, no fork of a process
  holding a llama.cpp context or SQLite connections.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import structlog

from core.cpus import physical_cores
from core.processes import stop
from runlog.batches import BatchStore

log = structlog.get_logger(__name__)

ROOT = Path(__file__).resolve().parents[1]


def threads_per_worker(workers: int) -> int:
    return max(1, physical_cores() // max(1, workers))


def worker_command(runlog_path: str | Path, batch_id: str, *, concurrency: int, threads: int,
                   durability: str = "full") -> list[str]:
    return [sys.executable, "-m", "batch.worker", "--runlog", str(runlog_path), "--batch", batch_id,
            "--concurrency", str(concurrency), "--threads", str(threads), "--durability", durability]


def run_workers(store: Any, batch_id: str, *, workers: int, concurrency: int = 1, on_progress: Any = None,
                poll_s: float = 0.5, max_restarts: int | None = None) -> dict[str, int]:
    """Run the batch's pending users on ``workers`` processes until none is pending or running.
    Returns outcome counts for this call (``done``, ``failed``, ``skipped``, ``restarted``)."""
    batches = BatchStore(store)
    before = batches.counts(batch_id)
    threads = threads_per_worker(workers)
    budget = workers * 2 if max_restarts is None else max_restarts
    cmd = worker_command(store.path, batch_id, concurrency=concurrency, threads=threads,
                         durability=getattr(store, "durability", "full"))
    procs: list[subprocess.Popen] = []

    def start() -> None:
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL))

    restarted = 0
    for _ in range(min(workers, max(1, before["pending"]))):
        start()
    log.info("batch_workers_started", batch_id=batch_id, workers=len(procs), threads_per_worker=threads)
    try:
        while procs:
            time.sleep(poll_s)
            for p in [p for p in procs if p.poll() is not None]:
                procs.remove(p)
                if p.returncode != 0:
                    settled = batches.reconcile(batch_id)
                    log.warning("batch_worker_died", batch_id=batch_id, pid=p.pid, returncode=p.returncode,
                                settled=settled)
                    if batches.counts(batch_id)["pending"] and restarted < budget:
                        restarted += 1
                        start()
            if on_progress:
                on_progress(batches.counts(batch_id))
    except BaseException:
        for p in procs:
            stop(p)
        raise
    after = batches.counts(batch_id)
    return {"done": after["done"] - before["done"], "failed": after["failed"] - before["failed"], "skipped": 0,
            "restarted": restarted}
