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

**Channel values once per version.** ``SqliteSaver`` stores every checkpoint with all of the
graph's channel values inside it, so each step serialised and wrote the whole state again (the
shared context, the candidate pool, the judge's requests), about 30 times per user. Like LangGraph's
in-memory and Postgres savers, this one stores the checkpoint without its values and each value once
in ``channel_blobs`` under its (thread, namespace, channel, version); ``get_tuple`` and ``list``
put the values back. A value is written when its version is new, or when that version is not in
``channel_blobs`` yet (a fork from a checkpoint written by the plain saver, whose values are inline:
those checkpoints are read as they are). Versions carry a random suffix, so a fork never reuses one.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import WRITES_IDX_MAP, BaseCheckpointSaver, CheckpointTuple
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver

from runlog.group_commit import GroupCommit, report_failures

_WRITES_COLUMNS = "(thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, value)"


#: one row per (thread, namespace, channel, version): a channel's value, stored once when it changes
_BLOBS_TABLE = """CREATE TABLE IF NOT EXISTS channel_blobs (
    thread_id TEXT NOT NULL, checkpoint_ns TEXT NOT NULL DEFAULT '', channel TEXT NOT NULL, version TEXT NOT NULL,
    type TEXT NOT NULL, blob BLOB, PRIMARY KEY (thread_id, checkpoint_ns, channel, version))"""


class GroupCommitSaver(SqliteSaver):
    """``SqliteSaver`` whose ``put_writes`` is group committed and whose checkpoints store each channel's
    value once per version (see the module docstring)."""

    def __init__(self, conn: sqlite3.Connection, *, serde: Any = None, name: str = "checkpoints"):
        super().__init__(conn, serde=serde)
        self.lock = threading.RLock()  # cursor() drains the queue while holding it
        self.write_errors = 0
        self._group = GroupCommit(name=name, lock=self.lock, commit=self._commit_writes)

    def setup(self) -> None:
        if self.is_setup:
            return
        super().setup()
        self.conn.execute(_BLOBS_TABLE)
        self.conn.commit()

    # ----- channel values, once per version -------------------------------------------------------
    def put(self, config: RunnableConfig, checkpoint: Any, metadata: Any, new_versions: Any) -> RunnableConfig:
        """Store the checkpoint without its channel values, and each value in ``channel_blobs`` under its
        channel version, unless that version is already there. One transaction with the queued writes."""
        conf = config["configurable"]
        thread_id, ns = str(conf["thread_id"]), str(conf.get("checkpoint_ns", ""))
        c = dict(checkpoint)
        values: dict[str, Any] = c.pop("channel_values", None) or {}
        c["channel_values"] = {}
        versions = c.get("channel_versions") or {}
        with self.lock:
            self.setup()
            unchanged = [ch for ch in values if ch not in new_versions and ch in versions]
            stored = set(self._blobs("channel, version", thread_id, ns, [(ch, versions[ch]) for ch in unchanged]))
            rows = [(thread_id, ns, ch, str(versions[ch]), *self.serde.dumps_typed(v)) for ch, v in values.items()
                    if ch in versions and (ch, str(versions[ch])) not in stored]
            self.conn.executemany("INSERT OR IGNORE INTO channel_blobs VALUES (?, ?, ?, ?, ?, ?)", rows)
            return super().put(config, c, metadata, new_versions)  # its cursor commits all of it

    def _blobs(self, columns: str, thread_id: str, ns: str, pairs: Sequence[tuple[str, Any]]) -> list[tuple]:
        """``columns`` of the ``channel_blobs`` rows of ``thread_id``/``ns`` for these (channel, version) pairs."""
        if not pairs:
            return []
        marks = ", ".join("(?, ?)" for _ in pairs)
        flat = [x for ch, ver in pairs for x in (ch, str(ver))]
        return self.conn.execute(f"SELECT {columns} FROM channel_blobs WHERE thread_id = ? AND checkpoint_ns = ?"
                                 f" AND (channel, version) IN (VALUES {marks})", (thread_id, ns, *flat)).fetchall()

    def _with_values(self, t: CheckpointTuple | None) -> CheckpointTuple | None:
        """Fill the channel values a checkpoint stored in ``channel_blobs`` (a checkpoint written by the
        plain ``SqliteSaver`` holds them inline and is returned as it is)."""
        if t is None:
            return None
        cp = t.checkpoint
        values = dict(cp.get("channel_values") or {})
        missing = [(ch, ver) for ch, ver in (cp.get("channel_versions") or {}).items() if ch not in values]
        conf = t.config["configurable"]
        for ch, typ, blob in self._blobs("channel, type, blob", str(conf["thread_id"]),
                                         str(conf.get("checkpoint_ns", "")), missing):
            values[ch] = self.serde.loads_typed((typ, blob))
        return t._replace(checkpoint={**cp, "channel_values": values})

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        with self.lock:
            return self._with_values(super().get_tuple(config))

    def list(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
             before: RunnableConfig | None = None, limit: int | None = None) -> Iterator[CheckpointTuple]:
        with self.lock:
            for t in super().list(config, filter=filter, before=before, limit=limit):
                yield self._with_values(t)

    def get_delta_channel_history(self, *, config: RunnableConfig, channels: Sequence[str]) -> Any:
        # SqliteSaver's fast path reads channel values from the checkpoint blob; the generic one reads
        # checkpoints through get_tuple/list, which fill them from channel_blobs
        return BaseCheckpointSaver.get_delta_channel_history(self, config=config, channels=channels)

    def delete_thread(self, thread_id: str) -> None:
        with self.lock:
            super().delete_thread(thread_id)
            with self.cursor() as cur:
                cur.execute("DELETE FROM channel_blobs WHERE thread_id = ?", (str(thread_id),))

    # ----- task writes, group committed ---------------------------------------------------------
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
        """Insert the group's task writes; commit when asked (otherwise the caller's transaction does).
        A task's writes that fail alone are skipped by SQLite's statement rollback, and the transaction
        goes on; a failed commit loses the group. Either is logged and counted."""
        failed: list[str] = []
        for sql, rows in group:
            try:
                self.conn.executemany(sql, rows)
            except sqlite3.Error as e:
                failed.append(f"one task's writes: {type(e).__name__}: {e}")
        if commit:
            try:
                self.conn.commit()
            except sqlite3.Error as e:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.rollback()
                failed = [f"{len(group)} task writes: {type(e).__name__}: {e}"]
                self.write_errors += len(group) - 1  # the line below adds the last one
        self.write_errors += report_failures(failed, event="checkpoint write failed", path=self._group.name)

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
