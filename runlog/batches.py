"""Batch jobs in the run log: which users a batch covers, and where each one stands.

A batch is a row in ``batches`` (its spec: users, date, overrides, backend, so ``--resume`` reruns it
with the same settings) and one row per user in ``batch_items``:

``pending`` → ``running`` (claimed, with the run id chosen *before* the graph starts) → ``done`` or
``failed`` (with the error).

Exactly-once, even across a SIGKILL
-----------------------------------
* A claim is a conditional UPDATE (``status='pending'``), so two workers, threads or processes,
  never take the same user.
* The run id is written at claim time and the graph's run is recorded under that id. If the process
  dies after the run finished but before the item was marked ``done``, :meth:`BatchStore.reconcile`
  finds the run's final status in ``runs`` and marks the item ``done`` instead of running the user
  again. If the run never finished (``incomplete``, or never started), the item goes back to
  ``pending``. Items whose writer is still alive (another process on this host working the same
  batch) are left alone.
* ``failed`` items stay failed until ``--retry-failed`` (:meth:`BatchStore.retry_failed`) puts them
  back to ``pending``; one user's failure never stops the batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from runlog.store import (
    FINAL_OK,
    RunLog,
    RunLogError,
    dumps,
    loads,
    new_id,
    now_iso,
    owner_alive,
    owner_token,
)

ITEM_STATES = ("pending", "running", "done", "failed")


class BatchNotFoundError(RunLogError):
    def __init__(self, batch_id: str, path: Any, known: int):
        super().__init__(f"unknown batch id {batch_id!r} ({known} batch(es) in {path}; see `app.py batches`)")


@dataclass(frozen=True)
class Claim:
    batch_id: str
    user_id: str
    run_id: str
    attempt: int


class BatchStore:
    """Batch bookkeeping on top of a :class:`RunLog` (same file, same connection and lock)."""

    def __init__(self, store: RunLog):
        self.store = store

    # ----- create and read ----------------------------------------------------------------------
    def create(self, users: Iterable[str], *, spec: dict[str, Any], dataset: str | None = None,
               engine: str = "local", batch_id: str | None = None) -> str:
        users = list(dict.fromkeys(str(u) for u in users))  # keep order, drop repeats
        if not users:
            raise RunLogError("a batch needs at least one user")
        batch_id = batch_id or new_id()[:12]
        now = now_iso()
        with self.store._tx() as c:
            c.execute("INSERT INTO batches(batch_id, created_at, updated_at, dataset, engine, n_users, spec_json,"
                      " status) VALUES (?,?,?,?,?,?,?,?)",
                      (batch_id, now, now, dataset, engine, len(users), dumps(spec), "open"))
            c.executemany("INSERT INTO batch_items(batch_id, user_id, position, status) VALUES (?,?,?,'pending')",
                          [(batch_id, u, i) for i, u in enumerate(users)])
        return batch_id

    def resolve(self, batch_id: str) -> str:
        rows = self.store._query("SELECT batch_id FROM batches WHERE batch_id=? OR batch_id LIKE ?",
                                 (batch_id, f"{batch_id}%"))
        exact = [r["batch_id"] for r in rows if r["batch_id"] == batch_id]
        if exact:
            return exact[0]
        if len(rows) == 1:
            return rows[0]["batch_id"]
        if len(rows) > 1:
            raise RunLogError(f"batch id prefix {batch_id!r} is ambiguous: "
                              + ", ".join(r["batch_id"] for r in rows[:5]))
        known = self.store._query("SELECT COUNT(*) FROM batches")[0][0]
        raise BatchNotFoundError(batch_id, self.store.path, known)

    def get(self, batch_id: str) -> dict[str, Any]:
        bid = self.resolve(batch_id)
        d = dict(self.store._query("SELECT * FROM batches WHERE batch_id=?", (bid,))[0])
        d["spec"] = loads(d.pop("spec_json"))
        d["counts"] = self.counts(bid)
        return d

    def list(self, limit: int | None = 50) -> list[dict[str, Any]]:
        sql = "SELECT batch_id FROM batches ORDER BY created_at DESC, rowid DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [self.get(r["batch_id"]) for r in self.store._query(sql)]

    def counts(self, batch_id: str) -> dict[str, int]:
        out = dict.fromkeys(ITEM_STATES, 0)
        for r in self.store._query("SELECT status, COUNT(*) n FROM batch_items WHERE batch_id=? GROUP BY status",
                                   (batch_id,)):
            out[r["status"]] = r["n"]
        out["total"] = sum(out[s] for s in ITEM_STATES)
        return out

    def items(self, batch_id: str, *, status: str | None = None) -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM batch_items WHERE batch_id=?", [batch_id]
        if status:
            sql += " AND status=?"
            params.append(status)
        return [dict(r) for r in self.store._query(sql + " ORDER BY position", params)]

    def pending_users(self, batch_id: str) -> list[str]:
        return [r["user_id"] for r in self.store._query(
            "SELECT user_id FROM batch_items WHERE batch_id=? AND status='pending' ORDER BY position", (batch_id,))]

    # ----- transitions --------------------------------------------------------------------------
    def claim(self, batch_id: str, user_id: str) -> Claim | None:
        """pending → running with a fresh run id; ``None`` if someone else holds the user."""
        run_id = new_id()
        with self.store._tx() as c:
            cur = c.execute("UPDATE batch_items SET status='running', run_id=?, run_status=NULL, owner=?,"
                            " started_at=?, ended_at=NULL, wall_s=NULL, error=NULL, attempts=attempts+1"
                            " WHERE batch_id=? AND user_id=? AND status='pending'",
                            (run_id, owner_token(), now_iso(), batch_id, user_id))
            if cur.rowcount != 1:
                return None
            attempt = c.execute("SELECT attempts FROM batch_items WHERE batch_id=? AND user_id=?",
                                (batch_id, user_id)).fetchone()[0]
        return Claim(batch_id, user_id, run_id, attempt)

    def _end(self, claim: Claim, status: str, *, run_status: str | None, error: str | None) -> None:
        with self.store._tx() as c:
            row = c.execute("SELECT started_at FROM batch_items WHERE batch_id=? AND user_id=?",
                            (claim.batch_id, claim.user_id)).fetchone()
            wall = None
            if row and row[0]:
                wall = round((datetime.now(UTC) - datetime.fromisoformat(row[0])).total_seconds(), 4)
            c.execute("UPDATE batch_items SET status=?, run_status=?, error=?, ended_at=?, wall_s=?"
                      " WHERE batch_id=? AND user_id=? AND run_id=?",
                      (status, run_status, error, now_iso(), wall, claim.batch_id, claim.user_id, claim.run_id))
            c.execute("UPDATE batches SET updated_at=? WHERE batch_id=?", (now_iso(), claim.batch_id))

    def complete(self, claim: Claim, run_status: str) -> None:
        self._end(claim, "done", run_status=run_status, error=None)

    def fail(self, claim: Claim, error: str, run_status: str | None = None) -> None:
        self._end(claim, "failed", run_status=run_status, error=error)

    def reconcile(self, batch_id: str) -> dict[str, int]:
        """Settle items left ``running`` by a writer that is gone (see the module docstring).
        Returns how many became ``done``, ``failed`` and ``pending`` again."""
        self.store.mark_incomplete()
        moved = {"done": 0, "failed": 0, "pending": 0}
        rows = self.store._query(
            "SELECT i.user_id, i.run_id, i.owner, r.status AS run_status, r.error AS run_error"
            " FROM batch_items i LEFT JOIN runs r ON r.run_id = i.run_id"
            " WHERE i.batch_id=? AND i.status='running'", (batch_id,))
        with self.store._tx() as c:
            for r in rows:
                if owner_alive(r["owner"]) is not False:
                    continue  # its writer is still working (or on another host)
                if r["run_status"] in FINAL_OK:
                    new, err = "done", None
                elif r["run_status"] == "error":
                    new, err = "failed", r["run_error"] or "error"
                else:  # incomplete, cancelled or never started: run it again
                    new, err = "pending", None
                c.execute("UPDATE batch_items SET status=?, run_status=?, error=?, ended_at=?"
                          " WHERE batch_id=? AND user_id=? AND status='running'",
                          (new, r["run_status"], err, now_iso() if new != "pending" else None, batch_id,
                           r["user_id"]))
                moved[new] += 1
        return moved

    def retry_failed(self, batch_id: str) -> int:
        with self.store._tx() as c:
            return c.execute("UPDATE batch_items SET status='pending' WHERE batch_id=? AND status='failed'",
                             (batch_id,)).rowcount

    def set_status(self, batch_id: str, status: str) -> None:
        with self.store._tx() as c:
            c.execute("UPDATE batches SET status=?, updated_at=? WHERE batch_id=?", (status, now_iso(), batch_id))
