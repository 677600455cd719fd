"""The LangGraph checkpointer beside the run log, with its task writes group committed.

LangGraph saves each finished task's writes (``put_writes``) from the task's own thread, and each
step's checkpoint (``put``) from the loop. ``SqliteSaver`` commits each call on its own, with a disk
sync under one lock, so at concurrency 8 the graph's threads queued behind each other's syncs.
:class:`GroupCommitSaver` hands the task writes, already serialised, to a
:class:`~runlog.group_commit.GroupCommit` writer and returns at once. Every other access (``put``,
``get_tuple``, ``list``, ``delete_thread``, the delta history) goes through ``cursor()``, which
first commits the queue under the same lock, so:

* a checkpoint is committed together with, and after, every task write queued before it; with the
  graph run at ``durability="sync"`` each step's checkpoint and writes are on disk before the next
  step starts, as with the plain saver;
* a read in this process sees every write queued before it;
* what a crash can lose is the writes of tasks that finished within the last few milliseconds of
  the current step; a resume runs those tasks again, as if the crash had come before they ended.

A write group that fails to commit is logged ("checkpoint write failed") and counted in
``write_errors`` (the run log adds it to its own count). ``close()`` commits what is queued and
closes the connection.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import WRITES_IDX_MAP
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver

from runlog.group_commit import GroupCommit

_log = structlog.get_logger("intentrec.runlog")
_WRITES_COLUMNS = "(thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, value)"


class GroupCommitSaver(SqliteSaver):
    """``SqliteSaver`` whose ``put_writes`` is group committed (see the module docstring)."""

    def __init__(self, conn: sqlite3.Connection, *, serde: Any = None, name: str = "checkpoints"):
        super().__init__(conn, serde=serde)
        self.lock = threading.RLock()  # cursor() drains the queue while holding it
        self.write_errors = 0
        self._group = GroupCommit(name=name, lock=self.lock, commit=self._commit_writes)

    @contextmanager
    def cursor(self, transaction: bool = True) -> Iterator[sqlite3.Cursor]:
        with self.lock:
            self.setup()
            pending = self._group.take()
            if pending:  # in the caller's transaction when it commits one (``put``): one sync for both
                self._write(pending, commit=not transaction)
            cur = self.conn.cursor()
            try:
                yield cur
            finally:
                if transaction:
                    self.conn.commit()
                cur.close()

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                   task_path: str = "") -> None:
        """Queue the task's writes for the next group (the same rows ``SqliteSaver`` inserts)."""
        verb = "INSERT OR REPLACE" if all(w[0] in WRITES_IDX_MAP for w in writes) else "INSERT OR IGNORE"
        conf = config["configurable"]
        key = (str(conf["thread_id"]), str(conf["checkpoint_ns"]), str(conf["checkpoint_id"]), task_id, task_path)
        rows = [(*key, WRITES_IDX_MAP.get(channel, idx), channel, *self.serde.dumps_typed(value))
                for idx, (channel, value) in enumerate(writes)]
        if not self._group.put((f"{verb} INTO writes {_WRITES_COLUMNS} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)):
            raise sqlite3.ProgrammingError(f"{self._group.name}: the checkpointer is closed")

    def _commit_writes(self, group: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        """The writer thread's commit: one transaction for the group; the caller holds ``lock``."""
        self.setup()
        self._write(group, commit=True)

    def _write(self, group: list[tuple[str, list[tuple[Any, ...]]]], *, commit: bool) -> None:
        try:
            for sql, rows in group:
                self.conn.executemany(sql, rows)
            if commit:
                self.conn.commit()
        except sqlite3.Error as e:
            with contextlib.suppress(sqlite3.Error):
                self.conn.rollback()
            self.write_errors += len(group)
            with contextlib.suppress(Exception):
                _log.error("checkpoint write failed", path=self._group.name,
                           error=f"{len(group)} task writes: {type(e).__name__}: {e}")

    def close(self) -> None:
        """Commit what is queued and close the connection."""
        self._group.close()
        with self.lock:
            self._group.drain()
            self.conn.close()


def open_checkpointer(path: Path, *, durability: str) -> GroupCommitSaver:
    """The checkpointer on ``path``: WAL, ``synchronous`` as the run log's ``durability``, and a
    msgpack serde that knows the judge types (``judges.subgraph.CHECKPOINT_TYPES``)."""
    from judges.subgraph import CHECKPOINT_TYPES

    conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {durability.upper()}")
    serde = JsonPlusSerializer(allowed_msgpack_modules=list(CHECKPOINT_TYPES))
    return GroupCommitSaver(conn, serde=serde, name=str(path))


__all__ = ["GroupCommitSaver", "open_checkpointer"]
