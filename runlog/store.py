"""The run log: one SQLite file holding every run of the recommendation graph, every judge replay and
every human label, so runs can be traced, forked and re-judged later.

Design decisions
----------------

* **Schema version.** ``SCHEMA_VERSION`` (now 3) is stored in ``PRAGMA user_version`` and in the
  ``meta`` table. Opening a file written by a newer schema is an error (never a silent downgrade);
  an older one is migrated in place by the functions in ``_MIGRATIONS``, inside one transaction
  (2: the ``batches`` / ``batch_items`` tables of ``runlog.batches``; 3: ``calls.cached_tokens``, the
  prompt tokens served from the backend's prefix cache, beside ``prompt_tokens``).
* **WAL and durability.** The file runs in WAL mode (readers never block the writer, and a crash can
  only lose a transaction that had not committed) with ``synchronous=FULL`` (a committed write
  survives a power cut, not only a process crash; ``durability="normal"`` trades that for speed).
  The graph's events (task starts and ends, model calls, the last checkpoint id) are **group
  committed**: the graph's threads queue each row (its JSON already encoded) and go on, and one
  writer thread commits whatever is queued in one transaction, at once, then the next group. A
  graph thread never waits on a disk sync, and at concurrency 8 one sync covers many events. A
  process killed mid-run keeps every group that had committed (the last one is milliseconds old)
  and never leaves a half-written row. Every other write (runs, batches, verdicts, labels) and every
  read first commits the queue, so the order of rows and read-your-writes hold within a process;
  ``flush()`` does it on demand, and ``close()`` and interpreter exit do it too. A queued row that
  fails is logged and counted in ``write_errors`` (the graph is never stopped by its log).
* **"incomplete".** A run is inserted as ``running`` before the graph starts, with its writer's
  identity (host, pid and the process start time, so a recycled pid is not mistaken for the
  writer). Its final status (``ok``, ``empty``, ``ok:fallback``, ``error``, ``cancelled``, ...) is
  written when it ends. Whenever a run log is opened, ``running`` runs whose writer is gone (same
  host, process dead) are marked ``incomplete``: the process died before the run ended. Their
  tasks, calls and verdicts up to that moment are kept. Runs written on another host keep
  ``running`` until that host opens the file.
* **What is stored per run** (``runs``): ids (run, thread, parent run for forks and replays),
  dataset, user, times, status, the context used (models per role, every prompt template's name,
  version, hash and path, sizes, environment), the request (``now`` and per-call overrides, which
  is what a fork rebuilds its context from), the last checkpoint id (time travel), the output
  summary and the error. ``tasks`` holds one row per graph task (node or subgraph node) with its
  parent task, timing, a checkpoint reference for its input (plus a compact copy of ``Send``
  payloads), a compact copy of its writes and its error. ``calls`` holds every model call with the
  rendered prompt messages, raw and parsed output, attempts, tokens, latency and error.
  ``recommendations``, ``verdict_sets`` / ``judgements`` (the judge's requests and verdicts, per judge
  pass; replays add sets linked to the original) and ``labels`` (human labels) complete it.
* **JSON, never pickle.** Structured values are stored as JSON text; pydantic models are dumped.
* **Threads.** One connection per ``RunLog``, shared by the graph's worker threads behind a lock
  (``check_same_thread=False``). Several processes may write the same file (WAL plus a busy
  timeout).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from itertools import islice
from pathlib import Path
from typing import Any

from langchain_core.messages import BaseMessage
from pydantic import BaseModel

from core.errors import IntentRecError
from core.processes import pid_alive, start_ticks
from runlog.group_commit import GroupCommit, report_failures

SCHEMA_VERSION = 3
DEFAULT_FILE = "runs.sqlite"
CHECKPOINTS_SUFFIX = ".checkpoints.sqlite"
FINAL_OK = ("ok", "empty", "ok:fallback", "empty:fallback")

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,                 -- recommend | fork | replay
    parent_run_id TEXT,
    thread_id TEXT,
    dataset TEXT,
    user_id TEXT,
    status TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    wall_s REAL,
    owner TEXT,
    context_json TEXT,
    request_json TEXT,
    fork_json TEXT,
    last_checkpoint_id TEXT,
    output_json TEXT,
    error TEXT,
    error_node TEXT
);
CREATE INDEX IF NOT EXISTS runs_user ON runs(user_id, started_at);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status, started_at);
CREATE INDEX IF NOT EXISTS runs_parent ON runs(parent_run_id);
CREATE TABLE IF NOT EXISTS tasks (
    run_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    parent_task_id TEXT,
    namespace TEXT NOT NULL,
    node TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    wall_s REAL,
    input_ref_json TEXT,
    input_json TEXT,
    result_json TEXT,
    error TEXT,
    PRIMARY KEY (run_id, task_id)
);
CREATE TABLE IF NOT EXISTS calls (
    call_id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    task_id TEXT,
    task_path TEXT,
    node TEXT,
    subject TEXT,
    model TEXT,
    prompt_name TEXT,
    prompt_version INTEGER,
    prompt_sha256 TEXT,
    prompt_path TEXT,
    messages_json TEXT,
    raw TEXT,
    parsed_json TEXT,
    record_json TEXT,
    attempts INTEGER,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    latency_s REAL,
    error TEXT,
    ts TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_run ON calls(run_id, node);
CREATE TABLE IF NOT EXISTS recommendations (
    run_id TEXT NOT NULL,
    rank INTEGER NOT NULL,
    item_id TEXT,
    title TEXT,
    tag TEXT,
    persona TEXT,
    grade TEXT,
    score REAL,
    explanation TEXT,
    json TEXT,
    PRIMARY KEY (run_id, rank)
);
CREATE TABLE IF NOT EXISTS verdict_sets (
    set_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,               -- the run whose outputs were judged
    source TEXT NOT NULL,               -- graph | replay
    producer_run_id TEXT,               -- the run that produced the verdicts (itself, or the replay)
    parent_set_id TEXT,                 -- replay: the set it re-judged
    created_at TEXT NOT NULL,
    judge_model TEXT,
    mode TEXT,
    threshold REAL,
    prompts_json TEXT,
    report_json TEXT
);
CREATE INDEX IF NOT EXISTS verdict_sets_run ON verdict_sets(run_id, source, created_at);
CREATE TABLE IF NOT EXISTS judgements (
    set_id TEXT NOT NULL,
    pass_no INTEGER NOT NULL,
    subject_id TEXT NOT NULL,
    node TEXT,
    kind TEXT,
    grade TEXT,
    request_json TEXT,
    verdict_json TEXT,
    PRIMARY KEY (set_id, pass_no, subject_id)
);
CREATE TABLE IF NOT EXISTS labels (
    run_id TEXT NOT NULL,
    pass_no INTEGER NOT NULL,
    subject_id TEXT NOT NULL,
    dimension TEXT NOT NULL,            -- "grade" or a dimension name
    value TEXT NOT NULL,
    labeler TEXT NOT NULL,
    source TEXT,
    imported_at TEXT NOT NULL,
    PRIMARY KEY (run_id, pass_no, subject_id, dimension, labeler)
);
"""

#: Version 2: batch jobs (``runlog.batches``). One row per batch (its spec, so ``--resume`` reruns it
#: with the same settings) and one per (batch, user): pending -> running -> done | failed, with the
#: run id claimed before the graph starts, so a resume can tell a finished run from a lost one.
_SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    updated_at TEXT,
    dataset TEXT,
    engine TEXT,
    n_users INTEGER NOT NULL,
    spec_json TEXT NOT NULL,
    status TEXT NOT NULL                -- open | finished
);
CREATE TABLE IF NOT EXISTS batch_items (
    batch_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    status TEXT NOT NULL,               -- pending | running | done | failed
    run_id TEXT,
    run_status TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    started_at TEXT,
    ended_at TEXT,
    wall_s REAL,
    error TEXT,
    PRIMARY KEY (batch_id, user_id)
);
CREATE INDEX IF NOT EXISTS batch_items_status ON batch_items(batch_id, status, position);
"""


def _statements(sql: str) -> list[str]:
    return [s for s in sql.split(";") if s.strip()]  # not executescript: it would commit early


def _migrate_v2(c: sqlite3.Connection) -> None:
    for stmt in _statements(_SCHEMA_V2):
        c.execute(stmt)


def _migrate_v3(c: sqlite3.Connection) -> None:
    c.execute("ALTER TABLE calls ADD COLUMN cached_tokens INTEGER")


#: version -> function migrating a connection from version-1 to version (run inside a transaction)
_MIGRATIONS: dict[int, Any] = {2: _migrate_v2, 3: _migrate_v3}


class RunLogError(IntentRecError):
    """A run log problem the user can fix (bad file, newer schema, a run without checkpoints)."""


class RunNotFoundError(RunLogError):
    def __init__(self, run_id: str, path: Path | str, known: int):
        self.run_id = run_id
        super().__init__(f"unknown run id {run_id!r} ({known} run(s) in {path}; see `app.py runs list`)")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def new_id() -> str:
    return uuid.uuid4().hex


# ------------------------------------------------------------------------------------------------
# JSON helpers (pydantic models, dataclasses, LangGraph's Overwrite, dates, paths)

def _unwrap(obj: Any) -> Any:
    """One level of what ``plain`` converts: a message, a model, LangGraph's ``Overwrite`` or a
    dataclass becomes its dict or value; anything else comes back as it is."""
    if isinstance(obj, BaseMessage):
        return {"role": obj.type, "content": obj.content}
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if type(obj).__name__ == "Overwrite" and hasattr(obj, "value"):
        return obj.value
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return obj


def plain(obj: Any) -> Any:
    """A JSON-able copy of ``obj`` without size caps (pydantic models dumped, tuples as lists)."""
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, BaseModel) and not isinstance(obj, BaseMessage):
        return obj.model_dump(mode="json")  # already JSON types: str keys, lists, no models
    if (inner := _unwrap(obj)) is not obj:
        return plain(inner)
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [plain(v) for v in obj]
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def compact(obj: Any, *, max_str: int = 300, max_items: int = 40, depth: int = 6) -> Any:
    """A small JSON-able summary of ``obj``: strings, lists and dicts capped (an ellipsis marks what
    was cut), for task inputs and outputs. Rendered prompts and raw outputs are stored in full.
    Equal to capping ``plain(obj)``, in one pass that converts only what the caps keep (a task's
    input holds the whole graph state, most of which the caps cut)."""
    return _cap(obj, max_str, max_items, depth)


_SCALARS = frozenset({type(None), bool, int, float})


def _cap(obj: Any, max_str: int, max_items: int, depth: int) -> Any:
    if obj is None or isinstance(obj, bool | int | float):
        return obj
    if not isinstance(obj, str | dict | list | tuple | set | frozenset):
        # what ``plain`` converts: one level, then capped (dates, paths and the rest become strings)
        inner = _unwrap(obj)
        return _cap(inner if inner is not obj else plain(obj), max_str, max_items, depth)
    if isinstance(obj, str):
        return obj if len(obj) <= max_str else obj[: max_str - 1] + "…"
    # below: scalars and short plain strings are kept inline (exact types only; the rest recurses)
    if isinstance(obj, dict):
        items = {str(k): v for k, v in obj.items()} if not all(type(k) is str for k in obj) else obj
        if depth <= 0:
            return f"<dict of {len(items)}>"
        out = {k: v if (t := type(v)) in _SCALARS or (t is str and len(v) <= max_str)
               else _cap(v, max_str, max_items, depth - 1) for k, v in islice(items.items(), max_items)}
        if len(items) > max_items:
            out["…"] = f"{len(items) - max_items} more keys"
        return out
    seq = obj if isinstance(obj, list | tuple) else list(obj)
    if depth <= 0:
        return f"<list of {len(seq)}>"
    out_l = [v if (t := type(v)) in _SCALARS or (t is str and len(v) <= max_str)
             else _cap(v, max_str, max_items, depth - 1) for v in seq[:max_items]]
    if len(seq) > max_items:
        out_l.append(f"… {len(seq) - max_items} more")
    return out_l


def _native_keys(obj: Any) -> bool:
    """Whether every dict key inside ``obj``'s own dicts and lists is a ``str``, which is what lets the
    C encoder walk it as it is (what it cannot encode goes through ``plain``, which writes str keys)."""
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            for k, v in o.items():
                if type(k) is not str:
                    return False
                if isinstance(v, dict | list | tuple):
                    stack.append(v)
        else:
            stack.extend(v for v in o if isinstance(v, dict | list | tuple))
    return True


def dumps(obj: Any, *, str_keys: bool = False) -> str | None:
    """JSON text of ``plain(obj)``, with the same output. The C encoder walks lists, dicts and
    scalars itself and calls ``plain`` only for what it cannot encode (models, messages, dates, sets;
    ``plain`` writes str keys throughout), so a large, already plain value is not copied first. A
    dict with a non-``str`` key (``plain`` writes ``str(k)``, ``json`` would write ``true``/``null``)
    takes the ``plain`` copy instead. ``str_keys=True`` skips looking for one, for a value whose
    dict keys are all ``str`` by construction (:func:`compact`'s output)."""
    if obj is None:
        return None
    if not str_keys and isinstance(obj, dict | list | tuple) and not _native_keys(obj):
        obj = plain(obj)
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=plain)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


# ------------------------------------------------------------------------------------------------
# the writing process's identity (to tell a live run from one whose process died)

def owner_token() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{start_ticks(pid)}"


def owner_alive(owner: str | None) -> bool | None:
    """True/False for a writer on this host; None when it cannot be told (another host, no owner)."""
    if not owner:
        return None
    host, _, rest = owner.partition(":")
    pid_s, _, ticks = rest.partition(":")
    if host != socket.gethostname() or not pid_s.isdigit():
        return None
    return pid_alive(int(pid_s), ticks)


# ------------------------------------------------------------------------------------------------

def default_path() -> Path:
    from core.paths import data_dir

    return data_dir() / DEFAULT_FILE


class RunLog:
    """The SQLite run log. ``RunLog(path)`` opens (and creates or migrates) the file."""

    def __init__(self, path: str | Path | None = None, *, durability: str = "full", recover: bool = True):
        self.path = Path(path) if path is not None else default_path()
        self.durability = durability
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if durability not in ("full", "normal"):
            raise RunLogError(f"durability must be 'full' or 'normal', not {durability!r}")
        self._lock = threading.RLock()
        #: the graph's event rows, ``(sql, params)``, committed in groups
        self._group = GroupCommit(name=str(self.path), lock=self._lock, commit=self._commit_rows)
        self._row_errors = 0
        try:
            self._conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA busy_timeout = 30000")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            self._conn.execute(f"PRAGMA synchronous = {durability.upper()}")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise RunLogError(f"{self.path}: not a readable run log ({e})") from e
        self.journal_mode = mode
        self._checkpointer: Any = None
        if recover:
            self.mark_incomplete()

    # ----- schema -------------------------------------------------------------------------------
    def _migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RunLogError(f"{self.path}: run log schema {version} is newer than this IntentRec understands "
                              f"({SCHEMA_VERSION}); upgrade IntentRec")
        if version == SCHEMA_VERSION:
            return
        with self._tx() as c:
            if version == 0:
                for stmt in _statements(_SCHEMA_V1):
                    c.execute(stmt)
                version = 1
            for v in range(version + 1, SCHEMA_VERSION + 1):
                _MIGRATIONS[v](c)
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            c.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('created_at', ?)", (now_iso(),))
            c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT), serialised across threads, after the
        group-commit queue (so rows keep their order)."""
        with self._lock, self._readable():
            self._commit_queue()
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock, self._readable():
            self._commit_queue()
            return self._conn.execute(sql, tuple(params)).fetchall()

    # ----- group commit ---------------------------------------------------------------------------
    def _enqueue(self, sql: str, params: tuple[Any, ...]) -> None:
        """Queue one event row for the group-commit writer."""
        if not self._group.put((sql, params)):
            raise RunLogError(f"{self.path}: the run log is closed")

    def _commit_queue(self) -> None:
        """Commit the queued event rows now; the caller holds ``_lock``."""
        self._group.drain()

    def _commit_rows(self, group: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Commit one group in one transaction. A row that fails alone (a constraint) is skipped by
        SQLite's statement rollback; a failed commit loses the group. Either is logged and counted."""
        failed: list[str] = []
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            for sql, params in group:
                try:
                    self._conn.execute(sql, params)
                except sqlite3.Error as e:
                    failed.append(f"{sql.split('(', 1)[0].strip()}: {type(e).__name__}: {e}")
            self._conn.execute("COMMIT")
        except sqlite3.Error as e:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            failed = [f"the group of {len(group)} rows: {type(e).__name__}: {e}"]
            self._row_errors += len(group) - 1  # the line below adds the last one
        self._row_errors += report_failures(failed, event="run log write failed", path=str(self.path))

    @property
    def write_errors(self) -> int:
        """Queued rows that failed to commit: the log's events and the checkpointer's task writes."""
        cp = self._checkpointer
        return self._row_errors + (cp.write_errors if cp is not None else 0)

    def flush(self) -> None:
        """Commit the queued event rows now."""
        with self._lock, self._readable():
            self._commit_queue()

    @contextlib.contextmanager
    def _readable(self) -> Iterator[None]:
        """A damaged file (``database disk image is malformed``, not a lock or a constraint) becomes one
        :class:`RunLogError` naming the file, wherever the damaged page is first read."""
        try:
            yield
        except (sqlite3.OperationalError, sqlite3.IntegrityError):
            raise
        except sqlite3.DatabaseError as e:
            raise RunLogError(f"{self.path}: the run log is damaged ({e}); move it aside to start a new one, "
                              f"or try `sqlite3 {self.path.name} .recover`") from e

    def close(self) -> None:
        self._group.close()
        with self._lock:
            self._commit_queue()  # logs and counts its own failures
            self._conn.close()
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._row_errors += self._checkpointer.write_errors
            self._checkpointer = None

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def integrity_check(self) -> str:
        return self._query("PRAGMA integrity_check")[0][0]

    # ----- the LangGraph checkpointer beside the log -------------------------------------------
    @property
    def checkpoints_path(self) -> Path:
        return self.path.with_name(self.path.stem + CHECKPOINTS_SUFFIX)

    def checkpointer(self) -> Any:
        """A LangGraph ``SqliteSaver`` on ``<name>.checkpoints.sqlite`` beside the log (WAL, the log's
        ``durability``), with a msgpack serde that knows the judge types (``judges.subgraph.CHECKPOINT_TYPES``),
        whose task writes are group committed (:class:`runlog.checkpoints.GroupCommitSaver`)."""
        if self._checkpointer is None:
            from runlog.checkpoints import open_checkpointer

            self._checkpointer = open_checkpointer(self.checkpoints_path, durability=self.durability)
        return self._checkpointer

    # ----- runs: writes ---------------------------------------------------------------------------
    def start_run(self, *, run_id: str | None = None, kind: str = "recommend", user_id: str | None = None,
                  dataset: str | None = None, thread_id: str | None = None, parent_run_id: str | None = None,
                  context: dict[str, Any] | None = None, request: dict[str, Any] | None = None,
                  fork: dict[str, Any] | None = None) -> str:
        run_id = run_id or new_id()
        with self._tx() as c:
            c.execute(
                "INSERT INTO runs(run_id, kind, parent_run_id, thread_id, dataset, user_id, status, started_at, owner,"
                " context_json, request_json, fork_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, kind, parent_run_id, thread_id, dataset, user_id, "running", now_iso(), owner_token(),
                 dumps(context), dumps(request), dumps(fork)))
        return run_id

    def finish_run(self, run_id: str, *, status: str, output: dict[str, Any] | None = None,
                   error: str | None = None, error_node: str | None = None) -> None:
        with self._tx() as c:
            row = c.execute("SELECT started_at FROM runs WHERE run_id=?", (run_id,)).fetchone()
            wall = None
            if row is not None:
                wall = round((datetime.now(UTC) - datetime.fromisoformat(row[0])).total_seconds(), 4)
            c.execute("UPDATE runs SET status=?, ended_at=?, wall_s=?, output_json=COALESCE(?, output_json),"
                      " error=?, error_node=? WHERE run_id=?",
                      (status, now_iso(), wall, dumps(output), error, error_node, run_id))

    def set_checkpoint(self, run_id: str, checkpoint_id: str) -> None:
        self._enqueue("UPDATE runs SET last_checkpoint_id=? WHERE run_id=?", (checkpoint_id, run_id))

    def set_output(self, run_id: str, output: dict[str, Any]) -> None:
        with self._tx() as c:
            c.execute("UPDATE runs SET output_json=? WHERE run_id=?", (dumps(output), run_id))

    def mark_incomplete(self) -> list[str]:
        """Mark ``running`` runs whose writer process is gone as ``incomplete``; returns their ids."""
        rows = self._query("SELECT run_id, owner FROM runs WHERE status='running'")
        dead = [r["run_id"] for r in rows if owner_alive(r["owner"]) is False]
        if dead:
            with self._tx() as c:
                c.executemany("UPDATE runs SET status='incomplete', error=COALESCE(error, ?) "
                              "WHERE run_id=? AND status='running'",
                              [("the writing process ended before the run finished", r) for r in dead])
        return dead

    # ----- tasks and calls --------------------------------------------------------------------
    def task_started(self, run_id: str, *, task_id: str, seq: int, node: str, namespace: str,
                     parent_task_id: str | None, input_ref: dict[str, Any] | None, input_: Any) -> None:
        """Queue a task's start row; ``input_`` is :func:`compact`'s output (str keys) or None."""
        self._enqueue("INSERT OR REPLACE INTO tasks(run_id, task_id, seq, parent_task_id, namespace, node, started_at,"
                      " input_ref_json, input_json) VALUES (?,?,?,?,?,?,?,?,?)",
                      (run_id, task_id, seq, parent_task_id, namespace, node, now_iso(), dumps(input_ref),
                       dumps(input_, str_keys=True)))

    def task_finished(self, run_id: str, *, task_id: str, wall_s: float | None, result: Any,
                      error: str | None) -> None:
        """Queue a task's end; ``result`` is :func:`compact`'s output (str keys)."""
        self._enqueue("UPDATE tasks SET ended_at=?, wall_s=?, result_json=?, error=? WHERE run_id=? AND task_id=?",
                      (now_iso(), None if wall_s is None else round(wall_s, 4), dumps(result, str_keys=True), error,
                       run_id, task_id))

    def add_call(self, run_id: str, *, node: str | None, subject: str | None, prompt: dict[str, Any] | None,
                 messages: Any, raw: str | None, parsed: Any, record: dict[str, Any] | None, error: str | None,
                 latency_s: float | None, task_path: str | None = None) -> None:
        """Queue one model call's row (group committed; see the module docstring)."""
        prompt = prompt or {}
        record = dict(record or {})
        if isinstance(raw, list | tuple):  # every attempt's raw output (a call that failed validation)
            record.setdefault("attempts", len(raw))
            raw = "\n".join(f"[attempt {i}] {r}" for i, r in enumerate(raw, start=1))
        elif raw is not None and not isinstance(raw, str):
            raw = str(raw)
        task_id = task_path.rsplit("|", 1)[-1].partition(":")[2] if task_path else None
        self._enqueue(
                "INSERT INTO calls(run_id, task_id, task_path, node, subject, model, prompt_name, prompt_version,"
                " prompt_sha256, prompt_path, messages_json, raw, parsed_json, record_json, attempts, prompt_tokens,"
                " cached_tokens, completion_tokens, latency_s, error, ts)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, task_id or None, task_path, node, subject, record.get("model") or record.get("model_id"),
                 prompt.get("name"), prompt.get("version"), prompt.get("sha256"), prompt.get("path"),
                 dumps(messages), raw, dumps(parsed), dumps(record), record.get("attempts"),
                 record.get("prompt_tokens"), record.get("cached_tokens"), record.get("completion_tokens"),
                 None if latency_s is None else round(float(latency_s), 4), error, now_iso()))

    def set_recommendations(self, run_id: str, recs: list[dict[str, Any]]) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM recommendations WHERE run_id=?", (run_id,))
            c.executemany(
                "INSERT INTO recommendations(run_id, rank, item_id, title, tag, persona, grade, score, explanation,"
                " json) VALUES (?,?,?,?,?,?,?,?,?,?)",
                [(run_id, i + 1, r.get("item_id"), r.get("title"), r.get("tag"), r.get("persona"), r.get("grade"),
                  r.get("score"), r.get("explanation"), dumps(r)) for i, r in enumerate(recs)])

    # ----- verdicts -----------------------------------------------------------------------------
    def create_verdict_set(self, *, run_id: str, source: str, producer_run_id: str | None = None,
                           parent_set_id: str | None = None, judge_model: str | None = None,
                           mode: str | None = None, threshold: float | None = None,
                           prompts: dict[str, Any] | None = None, set_id: str | None = None) -> str:
        set_id = set_id or new_id()
        with self._tx() as c:
            c.execute("INSERT INTO verdict_sets(set_id, run_id, source, producer_run_id, parent_set_id, created_at,"
                      " judge_model, mode, threshold, prompts_json) VALUES (?,?,?,?,?,?,?,?,?,?)",
                      (set_id, run_id, source, producer_run_id, parent_set_id, now_iso(), judge_model, mode,
                       threshold, dumps(prompts)))
        return set_id

    def add_judgements(self, set_id: str, pass_no: int, rows: list[dict[str, Any]]) -> None:
        """``rows``: dicts with subject_id, node, request (JudgeRequest or dict), verdict (Verdict or dict)."""
        vals = []
        for r in rows:
            verdict = plain(r.get("verdict"))
            request = plain(r.get("request"))
            kind = (verdict or {}).get("kind") or (request or {}).get("kind")
            vals.append((set_id, pass_no, r["subject_id"], r.get("node"), kind, (verdict or {}).get("grade"),
                         dumps(request), dumps(verdict)))
        with self._tx() as c:
            c.executemany("INSERT OR REPLACE INTO judgements(set_id, pass_no, subject_id, node, kind, grade,"
                          " request_json, verdict_json) VALUES (?,?,?,?,?,?,?,?)", vals)

    def set_report(self, set_id: str, report: dict[str, Any]) -> None:
        with self._tx() as c:
            c.execute("UPDATE verdict_sets SET report_json=? WHERE set_id=?", (dumps(report), set_id))

    # ----- labels -------------------------------------------------------------------------------
    def add_labels(self, rows: list[tuple[str, int, str, str, str, str]], *, source: str) -> int:
        """``rows``: (run_id, pass_no, subject_id, dimension, value, labeler); one transaction."""
        ts = now_iso()
        with self._tx() as c:
            c.executemany("INSERT OR REPLACE INTO labels(run_id, pass_no, subject_id, dimension, value, labeler,"
                          " source, imported_at) VALUES (?,?,?,?,?,?,?,?)",
                          [(*r, source, ts) for r in rows])
        return len(rows)

    def labels(self, run_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        rows = self._query("SELECT * FROM labels ORDER BY run_id, pass_no, subject_id, dimension, labeler")
        keep = set(run_ids) if run_ids is not None else None
        return [dict(r) for r in rows if keep is None or r["run_id"] in keep]

    # ----- reads --------------------------------------------------------------------------------
    def resolve(self, run_id: str) -> str:
        """The full run id for ``run_id`` or a unique prefix of it (at least 4 characters)."""
        run_id = (run_id or "").strip()
        if self._query("SELECT 1 FROM runs WHERE run_id=?", (run_id,)):
            return run_id
        if len(run_id) >= 4:
            rows = self._query("SELECT run_id FROM runs WHERE run_id LIKE ? ORDER BY run_id LIMIT 6",
                               (run_id.replace("%", "").replace("_", r"\_") + "%",))
            rows = [r for r in rows if r["run_id"].startswith(run_id)]
            if len(rows) == 1:
                return rows[0]["run_id"]
            if len(rows) > 1:
                raise RunLogError(f"run id prefix {run_id!r} is ambiguous: "
                                  + ", ".join(r["run_id"] for r in rows[:5]))
        n = self._query("SELECT COUNT(*) FROM runs")[0][0]
        raise RunNotFoundError(run_id, self.path, n)

    def get_run(self, run_id: str) -> dict[str, Any]:
        rid = self.resolve(run_id)
        row = self._query("SELECT * FROM runs WHERE run_id=?", (rid,))[0]
        return _run_dict(row)

    def runs(self, *, user: str | None = None, status: str | None = None, kind: str | None = None,
             since: str | None = None, parent: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        where, params = [], []
        for col, val in (("user_id", user), ("status", status), ("kind", kind), ("parent_run_id", parent)):
            if val is not None:
                where.append(f"{col}=?")
                params.append(val)
        if since:
            where.append("started_at >= ?")
            params.append(since)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY started_at DESC, rowid DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [_run_dict(r) for r in self._query(sql, params)]

    def run_stats(self, run_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Calls, tokens and recommendations per run (for listings)."""
        out: dict[str, dict[str, Any]] = {r: {"calls": 0, "tokens": 0, "recommendations": 0} for r in run_ids}
        if not run_ids:
            return out
        marks = ",".join("?" * len(run_ids))
        for r in self._query(f"SELECT run_id, COUNT(*) n, COALESCE(SUM(prompt_tokens),0)+COALESCE(SUM(completion_tokens),0)"
                             f" tok FROM calls WHERE run_id IN ({marks}) GROUP BY run_id", run_ids):
            out[r["run_id"]].update(calls=r["n"], tokens=r["tok"])
        for r in self._query(f"SELECT run_id, COUNT(*) n FROM recommendations WHERE run_id IN ({marks}) "
                             "GROUP BY run_id", run_ids):
            out[r["run_id"]]["recommendations"] = r["n"]
        return out

    def tasks(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._query("SELECT * FROM tasks WHERE run_id=? ORDER BY seq", (run_id,))
        return _decode_json_columns(rows, ("input_ref_json", "input_json", "result_json"))

    def calls(self, run_id: str, *, node: str | None = None) -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM calls WHERE run_id=?", [run_id]
        if node is not None:
            sql += " AND node=?"
            params.append(node)
        rows = self._query(sql + " ORDER BY call_id", params)
        return _decode_json_columns(rows, ("messages_json", "parsed_json", "record_json"))

    def recommendations(self, run_id: str) -> list[dict[str, Any]]:
        return [loads(r["json"]) for r in self._query("SELECT json FROM recommendations WHERE run_id=? ORDER BY rank",
                                                       (run_id,))]

    def verdict_sets(self, run_id: str | None = None, *, source: str | None = None) -> list[dict[str, Any]]:
        where, params = [], []
        if run_id is not None:
            where.append("run_id=?")
            params.append(run_id)
        if source is not None:
            where.append("source=?")
            params.append(source)
        sql = "SELECT * FROM verdict_sets" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self._query(sql + " ORDER BY created_at, rowid", params)
        out = []
        for r in rows:
            d = dict(r)
            d["prompts"] = loads(d.pop("prompts_json"))
            d["report"] = loads(d.pop("report_json"))
            out.append(d)
        return out

    def graph_set(self, run_id: str) -> dict[str, Any] | None:
        sets = self.verdict_sets(run_id, source="graph")
        return sets[0] if sets else None

    def latest_set(self, run_id: str, source: str) -> dict[str, Any] | None:
        sets = self.verdict_sets(run_id, source=source)
        return sets[-1] if sets else None

    def get_set(self, set_id: str) -> dict[str, Any]:
        rows = self._query("SELECT set_id FROM verdict_sets WHERE set_id=? OR set_id LIKE ?", (set_id, set_id + "%"))
        if len(rows) != 1:
            raise RunLogError(f"unknown or ambiguous verdict set {set_id!r}")
        return next(s for s in self.verdict_sets() if s["set_id"] == rows[0]["set_id"])

    def judgements(self, set_id: str) -> list[dict[str, Any]]:
        rows = self._query("SELECT * FROM judgements WHERE set_id=? ORDER BY pass_no, rowid", (set_id,))
        out = []
        for r in rows:
            d = dict(r)
            d["request"] = loads(d.pop("request_json"))
            d["verdict"] = loads(d.pop("verdict_json"))
            out.append(d)
        return out


def _run_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    for k in ("context_json", "request_json", "fork_json", "output_json"):
        d[k.removesuffix("_json")] = loads(d.pop(k))
    return d


def open_runlog(path: str | Path | None = None, *, durability: str = "full") -> RunLog:
    """The run log at ``path``, else ``INTENTREC_RUNLOG_PATH``, else ``<data dir>/runs.sqlite``."""
    if path is None:
        from runlog.settings import TraceSettings

        path = TraceSettings().runlog_file()
    return RunLog(path, durability=durability)


def elapsed(t0: float) -> float:
    return round(time.perf_counter() - t0, 4)


def _decode_json_columns(rows, columns: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows as dicts, each ``<name>_json`` column decoded into ``<name>``."""
    out = []
    for r in rows:
        d = dict(r)
        for k in columns:
            d[k.removesuffix("_json")] = loads(d.pop(k))
        out.append(d)
    return out

