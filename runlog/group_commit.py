"""Group commit: rows queued by many threads, committed by one writer thread, one transaction per group.

The run log's events and the checkpointer's task writes both use it. A graph thread hands its row
(already encoded) to :meth:`GroupCommit.put` and goes on; the writer thread takes everything queued
so far and commits it in one transaction (one disk sync), then the next group. Whoever reads or
writes the same connection outside the queue first calls :meth:`GroupCommit.drain` under the same
lock, so rows keep their order and a process reads its own writes.

* The writer thread ends after ``WRITER_IDLE_S`` seconds without a row and the next row starts
  another, also in a forked child (the parent's thread does not exist there).
* ``close()`` stops the writer; the owner then drains what is left and closes its connection.
  Interpreter exit drains every queue that still has a writer.
* The commit function owns its errors: it logs and counts a failed row or group. An exception that
  escapes it (a closed connection) stops the writer, is logged, and the next row starts another.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

import structlog

#: seconds the writer waits for a row before its thread ends (the next row starts one)
WRITER_IDLE_S = 5.0
_log = structlog.get_logger("intentrec.runlog")
#: queues with a writer thread, which interpreter exit drains
_OPEN: weakref.WeakSet[GroupCommit] = weakref.WeakSet()


class GroupCommit:
    """A queue of rows for ``commit(group)``, run by one writer thread under ``lock``.

    ``name`` names the file in log lines. ``lock`` is the owner's connection lock (re-entrant if the
    owner drains while holding it)."""

    def __init__(self, *, name: str, lock: Any, commit: Callable[[list[Any]], None]):
        self.name = name
        self.lock = lock
        self._commit = commit
        self._queue: list[Any] = []  # oldest first
        self._cv = threading.Condition()
        self.writer: threading.Thread | None = None
        self._writer_pid = 0
        self.closing = False

    @property
    def pending(self) -> int:
        """Rows queued and not yet taken by a commit."""
        return len(self._queue)

    def put(self, row: Any) -> bool:
        """Queue ``row`` (False, and nothing queued, once closed) and wake or start the writer."""
        with self._cv:
            if self.closing:
                return False
            self._queue.append(row)
            if self.writer is None or self._writer_pid != os.getpid():  # none yet, idle-exited, or forked
                self._writer_pid = os.getpid()
                self.writer = threading.Thread(target=self._write_loop, name=f"group-commit:{self.name}",
                                               daemon=True)
                self.writer.start()
                _OPEN.add(self)
            self._cv.notify()
        return True

    def take(self) -> list[Any]:
        """Remove and return every queued row, for an owner that commits them in its own
        transaction. The caller holds ``lock``."""
        with self._cv:
            group, self._queue = self._queue, []
        return group

    def drain(self) -> None:
        """Commit every queued row now, as one group. The caller holds ``lock``."""
        group = self.take()
        if group:
            self._commit(group)

    def close(self) -> None:
        """Refuse new rows and wait for the writer to finish its group; the owner drains the rest."""
        with self._cv:
            self.closing = True
            self._cv.notify_all()
            writer = self.writer
        if writer is not None and writer is not threading.current_thread():
            writer.join()
        _OPEN.discard(self)

    def _write_loop(self) -> None:
        while True:
            with self._cv:
                if not self._queue and not self.closing:
                    self._cv.wait(WRITER_IDLE_S)
                if not self._queue:
                    if not self.closing:
                        self.writer = None  # idle: exit, so an unused queue holds no thread
                    return
            try:
                with self.lock:
                    self.drain()
            except Exception as e:  # a closed connection: the commit function logged its rows; the thread ends
                with contextlib.suppress(Exception):
                    _log.error("group commit writer stopped", path=self.name, error=f"{type(e).__name__}: {e}")
                with self._cv:
                    self.writer = None  # the next row starts another
                return


def report_failures(failed: list[str], *, event: str, path: str) -> int:
    """Log each failed row or group of a commit under ``event`` (never raising, even when a logging
    sink is gone) and return how many there were, for the owner's error count."""
    for what in failed:
        with contextlib.suppress(Exception):
            _log.error(event, path=path, error=what)
    return len(failed)


@atexit.register
def _drain_open_queues() -> None:
    for group in list(_OPEN):
        with contextlib.suppress(Exception), group.lock:
            group.drain()


__all__ = ["WRITER_IDLE_S", "GroupCommit", "report_failures"]
