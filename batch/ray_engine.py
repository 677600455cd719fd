"""The batch on Ray: partitions of users as Ray tasks, each running :func:`batch.runner.process_user`.

The run log semantics are the local engine's: every worker claims a user in the same SQLite run log
before running it (so nothing is run twice, even with overlapping partitions or a resumed batch),
records the run under the claimed id, and marks it done or failed. The driver only submits the
partitions, polls the log for progress and gathers the counts.

* ``address=None`` starts a local Ray instance on this machine (no dashboard, a small object store);
  ``--ray-address auto`` or ``ray://host:10001`` joins an existing cluster.
* Each worker process builds its ``IntentRec`` once (:func:`_worker_rec`, cached per spec) and runs
  its partition on ``concurrency`` threads.
* The run log is a SQLite file: on a multi-node cluster it must sit on a filesystem every node
  mounts (WAL needs shared memory, so in practice: one node, or a local engine per node). Locally
  it just works.
* ``ray`` is an optional extra: ``pip install -e ".[ray]"``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batch.runner import BatchError, BatchSpec

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_RECS: dict[tuple[str, str], Any] = {}


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise BatchError('--engine ray needs Ray: pip install -e ".[ray]"') from e
    return ray


def _worker_rec(spec_json: str, runlog_path: str) -> Any:
    from batch.runner import build_rec
    from runlog.store import RunLog

    key = (spec_json, runlog_path)
    if key not in _RECS:
        _RECS[key] = build_rec(BatchSpec.model_validate_json(spec_json), RunLog(runlog_path))
    return _RECS[key]


def run_partition(spec_json: str, runlog_path: str, batch_id: str, users: list[str], concurrency: int) -> dict[str, int]:
    """One Ray task: run ``users`` of the batch in this worker (also callable without Ray)."""
    from batch.runner import run_local
    from runlog.batches import BatchStore

    rec = _worker_rec(spec_json, runlog_path)
    spec = BatchSpec.model_validate_json(spec_json)
    return run_local(rec, BatchStore(rec.runlog), batch_id, users, spec, concurrency=concurrency)


def partition(users: list[str], n: int) -> list[list[str]]:
    """``n`` contiguous, near-equal partitions (none empty)."""
    n = max(1, min(n, len(users)))
    size, extra = divmod(len(users), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(users[start:end])
        start = end
    return out


def run_ray(runlog_path: Path | str, batch_id: str, users: list[str], spec: BatchSpec, *, concurrency: int = 1,
            address: str | None = None, partitions: int | None = None,
            on_progress: Callable[[], Any] | None = None, poll_s: float = 0.5) -> dict[str, int]:
    ray = _import_ray()
    started_here = False
    if not ray.is_initialized():
        pythonpath = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = {"PYTHONPATH": pythonpath}
        for k, v in os.environ.items():  # the worker needs the same data dir, run log and LLM settings
            if k.startswith("INTENTREC_") or k.startswith("HF_"):
                env[k] = v
        kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "include_dashboard": False,
                                  "log_to_driver": False, "ignore_reinit_error": True}
        if address is None:
            kwargs["object_store_memory"] = 200 * 1024 * 1024
        ray.init(address=address, **kwargs)
        started_here = True
    try:
        n_parts = partitions or max(1, int(ray.available_resources().get("CPU", 1)))
        task = ray.remote(num_cpus=1, max_retries=0)(run_partition)
        spec_json = spec.model_dump_json()
        pending = [task.remote(spec_json, str(runlog_path), batch_id, part, concurrency)
                   for part in partition(users, n_parts)]
        outcomes = {"done": 0, "failed": 0, "skipped": 0}
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=poll_s)
            for ref in ready:
                for k, v in ray.get(ref).items():
                    outcomes[k] = outcomes.get(k, 0) + v
            if on_progress:
                on_progress()
        return outcomes
    finally:
        if started_here:
            ray.shutdown()
