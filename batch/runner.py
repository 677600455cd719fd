"""Run the recommendation graph for many users, resumably, with bounded concurrency.

The near-line half of RecGPT: personas, tags and recommendations for every user are computed in a
batch and written to the run log; serving (``app.py serve`` with ``fresh=false``) reads them back.

* **State lives in the run log** (``runlog.batches``): a batch row with its :class:`BatchSpec` and one
  row per user. Every run is recorded like any other (``trace RUN_ID`` works on batch runs).
* **Bounded concurrency.** ``concurrency`` worker threads share one ``IntentRec``; at most that many
  graphs (and so at most that many in-flight requests per agent step) run at once, which lets an
  OpenAI-compatible server (vLLM, llama.cpp server) batch them continuously. The embedded llama.cpp
  model serialises its own calls, so there concurrency only overlaps the non-LLM work.
* **Resumable.** Killed at any point, ``resume`` first settles the items the dead process left
  ``running`` (``BatchStore.reconcile``) and then runs only the users still ``pending``: none is lost
  and none is done twice.
* **Failures are recorded, not fatal.** A user whose run raises is marked ``failed`` with its error
  (``UnknownUserError``, ``EmptyHistoryError``, a dead server, ...); the batch goes on.
  ``retry_failed=True`` puts failed users back to ``pending`` first.
* Engines: ``local`` (threads in this process, :func:`run_local`; with ``workers`` > 1, that many
  processes with a model each, ``batch.workers``) and ``ray``
  (``batch.ray_engine``): the same :func:`process_user` over partitions of users, as Ray tasks.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field

from core.errors import IntentRecError
from runlog.batches import BatchStore
from runlog.store import RunLog

log = structlog.get_logger(__name__)

ProgressFn = Callable[[dict[str, int]], None]


class BatchSpec(BaseModel):
    """Everything needed to (re)build the graph and run one user exactly as the batch first did.
    Stored as JSON with the batch, so ``--resume`` uses the original settings."""

    model_config = ConfigDict(extra="forbid")

    dataset: str | None = None
    now: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    backend: str | None = None
    model: str | None = None
    base_url: str | None = None
    index_cutoff: str | None = None
    prompts: str | None = None
    factory: str | None = None  # module:function(RunLog) -> IntentRec, instead of the settings above
    #: local backend: the LoRA adapter file the batch runs with ("none": the base model) and its
    #: ``+<sha256[:12]>``, pinned when the batch is created (``pin_spec``)
    adapter: str | None = None
    adapter_id: str | None = None
    seed: int | None = None  # of the --users sample (a record; the users themselves are stored)
    #: template name -> its sha256[:16], for every template the runs may render (``prompts`` folder
    #: included), pinned when the batch is created (``pin_spec``): a reuse check compares them, and a
    #: resume refuses templates that changed since
    prompt_refs: dict[str, str] = Field(default_factory=dict)
    selection: dict[str, int] = Field(default_factory=dict)  # users left out when choosing, and why


class BatchError(IntentRecError):
    """A batch cannot start (no users, no run log, bad options)."""


def build_rec(spec: BatchSpec, store: RunLog, *, progress: bool = False, n_threads: int | None = None) -> Any:
    """The ``IntentRec`` a batch runs on: the spec's factory, else ``IntentRec.from_settings``.
    ``n_threads``: llama.cpp threads for the local backend (``batch --workers`` divides the cores)."""
    from runlog.cli_options import load_factory

    fn = load_factory(spec.factory) if spec.factory else None
    if fn is not None:
        return fn(store)
    from intentrec.service import IntentRec

    if spec.prompt_refs:
        now = prompt_refs(spec.prompts)
        changed = sorted(k for k in spec.prompt_refs.keys() | now.keys() if spec.prompt_refs.get(k) != now.get(k))
        if changed:
            raise BatchError(f"the prompt templates {changed} changed since this batch was created "
                             f"(pinned {[spec.prompt_refs.get(k) for k in changed]}, now {[now.get(k) for k in changed]}): "
                             "its runs cannot be continued as they began; start a new batch")

    retrieval = None
    if spec.index_cutoff:
        from core.options import parse_date
        from retrieval.settings import RetrievalSettings

        retrieval = RetrievalSettings(cutoff=parse_date(spec.index_cutoff, "--index-cutoff"))
    return IntentRec.from_settings(spec.dataset, llm_settings=llm_settings(spec, n_threads=n_threads),
                                   retrieval_settings=retrieval,
                                   prompts_dir=spec.prompts, runlog=store, progress=progress)


def llm_settings(spec: BatchSpec, *, n_threads: int | None = None) -> Any:
    """The ``LLMSettings`` a batch runs with: the spec's backend, model, server and pinned adapter
    over the environment and config file."""
    from llm.settings import LLMSettings

    return LLMSettings(**{k: v for k, v in {"backend": spec.backend, "model": spec.model, "base_url": spec.base_url,
                                            "n_threads": n_threads, "adapter": spec.adapter}.items() if v})


def prompt_refs(prompts_dir: str | None) -> dict[str, str]:
    """Each template's sha256[:16], as the runs of a batch with this ``prompts`` folder load them."""
    from prompts.registry import PromptRegistry

    reg = PromptRegistry([prompts_dir] if prompts_dir else None)
    return {name: reg.get(name).ref["sha256"] for name in reg.names()}


def pin_spec(spec: BatchSpec) -> BatchSpec:
    """``spec`` with what the environment would otherwise decide later fixed now. The local backend's
    LoRA adapter is resolved now (``LLMSettings.adapter_path``: the
    setting, else the shipped file): a resume runs, and a reuse check compares, the same weights
    whatever ``INTENTREC_LLM_ADAPTER`` says later. Unchanged for a factory, another backend or a
    spec that already names its adapter. Where runs get the small-model defaults, their prompt sizes
    (``agents.context.SMALL_MODEL_PROMPT``) are pinned into ``overrides`` too (an explicit override
    wins), so a batch made before those defaults changed is neither resumed with nor reused for the
    new ones. The templates' hashes are pinned likewise (``prompt_refs``)."""
    from agents.context import SMALL_MODEL_PROMPT
    from llm.local import adapter_id

    if spec.factory:
        return spec
    if not spec.prompt_refs:
        spec = spec.model_copy(update={"prompt_refs": prompt_refs(spec.prompts)})
    if spec.adapter:
        return spec
    settings = llm_settings(spec)
    if settings.small_model():
        spec = spec.model_copy(update={"overrides": {**SMALL_MODEL_PROMPT, **spec.overrides}})
    if settings.backend != "local":
        return spec
    path = settings.adapter_path()
    if path is None:
        return spec.model_copy(update={"adapter": "none", "adapter_id": None})
    resolved = Path(path).expanduser().resolve()
    return spec.model_copy(update={"adapter": str(resolved), "adapter_id": adapter_id(resolved)})


def select_users(dataset: Any, *, n: int | None = None, all_users: bool = False, user_file: Path | None = None,
                 now: datetime | None = None, seed: int = 0) -> tuple[list[str], dict[str, int]]:
    """The batch's users and a report of what was left out and why.

    ``user_file``: one id per line (blank lines and ``#`` comments skipped), kept as given — an unknown
    id is not dropped here, it fails in the batch with ``UnknownUserError`` and is counted there.
    ``n`` / ``all_users``: users with at least one behaviour before ``now`` (the others are counted
    as ``no_history_before_now``); ``n`` is a fixed-seed sample of them, in id order."""
    report: dict[str, int] = {}
    if user_file is not None:
        try:
            lines = Path(user_file).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise BatchError(f"cannot read --user-file {user_file}: {e}") from e
        users = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        report["repeated_in_file"] = len(users) - len(dict.fromkeys(users))
        users = list(dict.fromkeys(users))
        if not users:
            raise BatchError(f"--user-file {user_file} lists no user ids")
        return users, report
    if not all_users and (n is None or n <= 0):
        raise BatchError("choose the users: --users N (N ≥ 1), --all or --user-file F")
    beh = dataset.behaviors
    if now is not None:
        beh = beh.filter(beh["ts"] < now)
    with_history = sorted({str(u) for u in beh["user_id"].unique().to_list()})
    all_ids = {str(u) for u in dataset.users["user_id"].to_list()} if getattr(dataset, "users", None) is not None \
        else set(with_history)
    report["no_history_before_now"] = len(all_ids - set(with_history))
    if all_users:
        return with_history, report
    if n > len(with_history):
        raise BatchError(f"--users {n}: only {len(with_history)} users have history before the batch date")
    picked = set(random.Random(seed).sample(with_history, n))
    return [u for u in with_history if u in picked], report


def process_user(rec: Any, batches: BatchStore, batch_id: str, user_id: str, spec: BatchSpec) -> str:
    """Claim, run and settle one user. Returns ``done``, ``failed`` or ``skipped`` (claimed elsewhere)."""
    claim = batches.claim(batch_id, user_id)
    if claim is None:
        return "skipped"
    try:
        out = rec.recommend(user_id, now=spec.now, run_id=claim.run_id, **spec.overrides)
    except Exception as e:  # one user's failure never stops the batch; the error is recorded
        log.warning("batch_user_failed", batch_id=batch_id, user_id=user_id, error=f"{type(e).__name__}: {e}")
        batches.fail(claim, f"{type(e).__name__}: {e}", run_status="error")
        return "failed"
    batches.complete(claim, str(out.get("status") or "ok"))
    return "done"


def run_local(rec: Any, batches: BatchStore, batch_id: str, users: list[str], spec: BatchSpec, *,
              concurrency: int = 1, on_progress: ProgressFn | None = None, poll_s: float = 0.5) -> dict[str, int]:
    """Run ``users`` of the batch on ``concurrency`` threads sharing ``rec``; returns outcome counts."""
    if concurrency < 1:
        raise BatchError(f"--concurrency must be at least 1, not {concurrency}")
    outcomes = {"done": 0, "failed": 0, "skipped": 0}
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="batch") as pool:
        futures = {pool.submit(process_user, rec, batches, batch_id, u, spec) for u in users}
        try:
            while futures:
                finished, futures = wait(futures, timeout=poll_s, return_when=FIRST_COMPLETED)
                for f in finished:
                    outcomes[f.result()] += 1
                if on_progress:
                    on_progress(batches.counts(batch_id))
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return outcomes


def execute(store: RunLog, batch_id: str, *, engine: str = "local", concurrency: int = 1, workers: int = 1,
            retry_failed: bool = False, rec: Any = None, ray_address: str | None = None,
            partitions: int | None = None, on_progress: ProgressFn | None = None,
            progress_build: bool = False) -> dict[str, Any]:
    """Run (or resume) a batch to the end. Returns a summary: counts, outcomes, wall time, rate."""
    batches = BatchStore(store)
    info = batches.get(batch_id)
    batch_id = info["batch_id"]
    spec = BatchSpec.model_validate(info["spec"])
    settled = batches.reconcile(batch_id)
    retried = batches.retry_failed(batch_id) if retry_failed else 0
    users = batches.pending_users(batch_id)
    log.info("batch_start", batch_id=batch_id, engine=engine, pending=len(users), settled=settled, retried=retried)
    if on_progress:
        on_progress(batches.counts(batch_id))
    t0 = time.perf_counter()
    if workers < 1:
        raise BatchError(f"--workers must be at least 1, not {workers}")
    if users:
        if engine == "local" and workers > 1:
            from batch.workers import run_workers

            outcomes = run_workers(store, batch_id, workers=workers, concurrency=concurrency, on_progress=on_progress)
        elif engine == "local":
            rec = rec if rec is not None else build_rec(spec, store, progress=progress_build)
            outcomes = run_local(rec, batches, batch_id, users, spec, concurrency=concurrency,
                                 on_progress=on_progress)
        elif engine == "ray":
            from batch.ray_engine import run_ray

            outcomes = run_ray(store.path, batch_id, users, spec, concurrency=concurrency, address=ray_address,
                               partitions=partitions, on_progress=lambda: on_progress and on_progress(
                                   batches.counts(batch_id)))
        else:
            raise BatchError(f"--engine must be local or ray, not {engine!r}")
    else:
        outcomes = {"done": 0, "failed": 0, "skipped": 0}
    wall = time.perf_counter() - t0
    counts = batches.counts(batch_id)
    if counts["pending"] == 0 and counts["running"] == 0:
        batches.set_status(batch_id, "finished")
    ran = outcomes["done"] + outcomes["failed"]
    return {"batch_id": batch_id, "engine": engine, "concurrency": concurrency, "workers": workers, "counts": counts,
            "this_run": {**outcomes, "settled_from_previous": settled, "retried": retried},
            "wall_s": round(wall, 2), "users_per_min": round(60 * ran / wall, 2) if wall > 0 and ran else 0.0,
            "run_log_write_errors": store.write_errors,  # this process's queued rows that failed (logged)
            "failed": [{"user_id": r["user_id"], "error": r["error"]} for r in batches.items(batch_id, status="failed")]}
