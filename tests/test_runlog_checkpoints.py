"""The checkpointer beside the run log: task writes are group committed (runlog/checkpoints.py)."""

from __future__ import annotations

import operator
import sqlite3
from typing import Annotated, TypedDict

import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

from runlog.store import RunLog


def _config(checkpoint_id: str = "c1") -> dict:
    return {"configurable": {"thread_id": "t", "checkpoint_ns": "", "checkpoint_id": checkpoint_id}}


def _writes_on_disk(path) -> int:
    other = sqlite3.connect(path)
    try:
        return other.execute("SELECT COUNT(*) FROM writes").fetchone()[0]
    finally:
        other.close()


def _put_checkpoint(saver, checkpoint_id: str = "c1") -> None:
    cp = empty_checkpoint()
    cp["id"] = checkpoint_id
    saver.put({"configurable": {"thread_id": "t", "checkpoint_ns": ""}}, cp, {"step": 0}, {})


def test_task_writes_are_queued_then_read_back_and_committed_with_the_checkpoint(tmp_path):
    store = RunLog(tmp_path / "runs.sqlite")
    saver = store.checkpointer()
    _put_checkpoint(saver)
    with saver.lock:  # hold the writer thread off: only this thread's own accesses can commit
        saver.put_writes(_config(), [("a", 1), ("b", {"x": [1, 2]})], task_id="task1")
        saver.put_writes(_config(), [("a", 2)], task_id="task2")
        assert saver._group.pending == 2
        assert _writes_on_disk(store.checkpoints_path) == 0  # not committed yet
        got = saver.get_tuple(_config())  # a read commits the queue first
        assert saver._group.pending == 0
        assert sorted((t, c, v) for t, c, v in got.pending_writes) == [
            ("task1", "a", 1), ("task1", "b", {"x": [1, 2]}), ("task2", "a", 2)]
        assert _writes_on_disk(store.checkpoints_path) == 3
        saver.put_writes(_config(), [("c", 3)], task_id="task3")
        _put_checkpoint(saver, "c2")  # the next checkpoint commits the write in its own transaction
        assert saver._group.pending == 0 and _writes_on_disk(store.checkpoints_path) == 4
    store.close()


def test_the_writer_thread_commits_without_a_read(tmp_path):
    store = RunLog(tmp_path / "runs.sqlite")
    saver = store.checkpointer()
    _put_checkpoint(saver)
    saver.put_writes(_config(), [("a", 1)], task_id="task1")
    writer = saver._group.writer
    assert writer is not None
    for _ in range(200):
        if _writes_on_disk(store.checkpoints_path) == 1:
            break
        writer.join(timeout=0.05)
    assert _writes_on_disk(store.checkpoints_path) == 1
    store.close()


def test_a_failing_write_group_is_counted_and_logged(tmp_path):
    from structlog.testing import capture_logs

    store = RunLog(tmp_path / "runs.sqlite")
    saver = store.checkpointer()
    _put_checkpoint(saver)
    with capture_logs() as logs:
        with saver.lock:
            saver._group.put(("INSERT INTO no_such_table VALUES (?)", [(1,)]))
        saver._group.close()
        with saver.lock:
            saver._group.drain()
    assert saver.write_errors == 1 and store.write_errors == 1
    assert [e["event"] for e in logs] == ["checkpoint write failed"] and "no_such_table" in logs[0]["error"]
    store.close()
    assert store.write_errors == 1  # kept after the checkpointer is closed


def test_close_commits_the_queue_and_refuses_later_writes(tmp_path):
    store = RunLog(tmp_path / "runs.sqlite")
    saver = store.checkpointer()
    _put_checkpoint(saver)
    with saver.lock:
        saver.put_writes(_config(), [("a", 1)], task_id="task1")
    store.close()
    assert _writes_on_disk(store.checkpoints_path) == 1
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        saver.put_writes(_config(), [("a", 2)], task_id="task2")


class _State(TypedDict, total=False):
    n: int
    got: Annotated[list[int], operator.add]


def test_a_fanned_out_graph_resumes_from_group_committed_writes(tmp_path):
    """Sends whose writes were group committed: the final state and a resumed history are whole."""
    def fan(state: _State):
        return [Send("work", {"n": i}) for i in range(state["n"])]

    g = StateGraph(_State)
    g.add_node("work", lambda s: {"got": [s["n"] * 10]})
    g.add_conditional_edges(START, fan, ["work"])
    g.add_edge("work", END)
    store = RunLog(tmp_path / "runs.sqlite")
    graph = g.compile(checkpointer=store.checkpointer())
    cfg = {"configurable": {"thread_id": "fan"}}
    out = graph.invoke({"n": 8}, cfg, durability="sync")
    assert sorted(out["got"]) == [0, 10, 20, 30, 40, 50, 60, 70]
    store.close()
    reopened = RunLog(tmp_path / "runs.sqlite")
    graph = g.compile(checkpointer=reopened.checkpointer())
    assert sorted(graph.get_state(cfg).values["got"]) == [0, 10, 20, 30, 40, 50, 60, 70]
    assert _writes_on_disk(reopened.checkpoints_path) >= 8
    reopened.close()


class _Chain(TypedDict, total=False):
    big: str
    n: int
    got: Annotated[list[int], operator.add]


def _chain_graph():
    g = StateGraph(_Chain)
    g.add_node("first", lambda s: {"big": "x" * 5000, "n": 0})
    for i in range(1, 6):
        g.add_node(f"step{i}", lambda s: {"n": s["n"] + 1, "got": [s["n"]]})
    g.add_edge(START, "first")
    g.add_edge("first", "step1")
    for i in range(1, 5):
        g.add_edge(f"step{i}", f"step{i + 1}")
    g.add_edge("step5", END)
    return g


def test_each_channel_value_is_stored_once_per_version_and_every_snapshot_reads_back_whole(tmp_path):
    from langgraph.checkpoint.memory import InMemorySaver

    cfg = {"configurable": {"thread_id": "chain"}}
    reference = _chain_graph().compile(checkpointer=InMemorySaver())
    reference.invoke({}, cfg, durability="sync")
    store = RunLog(tmp_path / "runs.sqlite")
    graph = _chain_graph().compile(checkpointer=store.checkpointer())
    out = graph.invoke({}, cfg, durability="sync")
    assert out["n"] == 5 and out["got"] == [0, 1, 2, 3, 4] and len(out["big"]) == 5000
    history = [s.values for s in graph.get_state_history(cfg)]
    assert history == [s.values for s in reference.get_state_history(cfg)] and len(history) == 8
    ck = sqlite3.connect(store.checkpoints_path)
    # the 5,000-character value was written once, in one step, and is stored once, not in every checkpoint
    assert ck.execute("SELECT COUNT(*) FROM channel_blobs WHERE channel='big'").fetchone()[0] == 1
    assert ck.execute("SELECT MAX(LENGTH(checkpoint)) FROM checkpoints").fetchone()[0] < 2000
    ck.close()
    store.close()


def test_checkpoints_of_the_plain_saver_still_read_and_fork(tmp_path):
    """A file written before (channel values inline): read back whole, and a fork from it keeps the
    values it did not change, although they were never in channel_blobs."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    path = tmp_path / "runs.checkpoints.sqlite"
    cfg = {"configurable": {"thread_id": "chain"}}
    conn = sqlite3.connect(path, check_same_thread=False)
    old = _chain_graph().compile(checkpointer=SqliteSaver(conn))
    old.invoke({}, cfg, durability="sync")
    conn.close()
    store = RunLog(tmp_path / "runs.sqlite")
    graph = _chain_graph().compile(checkpointer=store.checkpointer())
    state = graph.get_state(cfg)
    assert state.values["n"] == 5 and len(state.values["big"]) == 5000
    third = next(s for s in graph.get_state_history(cfg) if s.next == ("step3",))
    forked = graph.update_state(third.config, {"n": 100}, as_node="step2")
    out = graph.invoke(None, forked, durability="sync")
    assert out["n"] == 103 and len(out["big"]) == 5000 and out["got"][-3:] == [100, 101, 102]
    assert len(graph.get_state(cfg).values["big"]) == 5000  # the fork's latest checkpoint, re-read from disk
    store.close()
