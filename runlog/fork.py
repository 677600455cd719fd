"""Time travel: re-run a logged run from a checkpoint with a changed state value.

``fork_run(rec, RUN_ID, node="retrieve", edit={"tags": [...]})`` means "run ``retrieve`` again, and
everything after it, on the state it read, with ``edit`` applied". Steps:

1. Walk the run's own checkpoint branch back from its last checkpoint (``runs.last_checkpoint_id``;
   parents via ``StateSnapshot.parent_config``, so forks of forks stay on their branch) to the
   newest checkpoint whose ``next`` holds ``node``.
2. ``graph.update_state(that checkpoint, edit, as_node=<the node that wrote it>)``: the edit is
   applied as that node's output and its edges fire again, so fan-outs (``Send``) are rebuilt from
   the edited state (new personas reach the experts, new candidates the explainers). Then
   ``stream(None, config)`` continues from the new checkpoint.
3. If the writer routes with ``Command(goto=...)`` (``tag_gate``, ``explain_gate``), re-running its
   edges cannot restore the route, so ``node`` would not be next. Then the fork resumes the
   checkpoint itself with ``Command(update=edit)``: the edit is applied and the pending tasks run.

Edits go through the state's reducers like any update: keys without a reducer (``tags``,
``candidates``, ``personas``) are replaced; keys with one (``proposals``, ``drops``) are appended to,
unless given as ``{"$overwrite": value}``. Unknown keys are an error. The fork is recorded as a new
run (kind ``fork``) with ``parent_run_id`` and ``fork`` = node, edit, source checkpoint and method;
its context is rebuilt from the original run's recorded request (``now`` and per-call overrides).
"""

from __future__ import annotations

import json
from typing import Any

from langgraph.errors import InvalidUpdateError
from langgraph.types import Command, Overwrite

from runlog.recorder import RecordedRun
from runlog.store import RunLogError, new_id


def _is_overwrite(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"$overwrite"}


def _decode(value: Any) -> Any:
    return Overwrite(value["$overwrite"]) if _is_overwrite(value) else value


#: state keys that hold lists of records, and the field each record must have (a plain string where a
#: record belongs failed deep inside the node that read it)
RECORD_KEYS = {"tags": "tag", "personas": "name", "candidates": "item_id", "tag_candidates": "phrase"}


def check_edit(edit: Any) -> dict[str, Any]:
    from graphs.state import State

    if not isinstance(edit, dict):
        raise RunLogError(f"--edit must be a JSON object of state keys, not {type(edit).__name__}")
    keys = set(State.__annotations__)
    unknown = sorted(set(edit) - keys)
    if unknown:
        raise RunLogError(f"unknown state key(s) in the edit: {unknown}; state keys: {sorted(keys)}")
    for key, field in RECORD_KEYS.items():
        if key not in edit:
            continue
        value = edit[key]
        value = value["$overwrite"] if _is_overwrite(value) else value
        if not isinstance(value, list):
            raise RunLogError(f"--edit: {key!r} must be a list of objects, not {type(value).__name__}")
        for i, rec in enumerate(value):
            if not isinstance(rec, dict) or not rec.get(field):
                raise RunLogError(f"--edit: {key}[{i}] must be an object with a non-empty {field!r} "
                                  f"(got {json.dumps(rec)[:80]})")
    return {k: _decode(v) for k, v in edit.items()}


def branch(graph: Any, config: dict[str, Any]) -> list[Any]:
    """Snapshots from ``config`` back to the start of the thread, newest first."""
    out = []
    snap = graph.get_state(config)
    while snap is not None and snap.created_at is not None:
        out.append(snap)
        if snap.parent_config is None:
            break
        snap = graph.get_state(snap.parent_config)
    return out


def fork_run(rec: Any, run_id: str, *, node: str, edit: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    store = rec.runlog
    if store is None:
        raise RunLogError("this IntentRec has no run log; build it with runlog=...")
    run = store.get_run(run_id)
    rid = run["run_id"]
    graph = rec.graph
    nodes = [n for n in graph.nodes if not n.startswith("__")]
    if node not in nodes:
        raise RunLogError(f"cannot fork at {node!r}: not a node of the graph; nodes: {', '.join(nodes)}")
    values = check_edit(edit)
    if rec.checkpointer is None or not run.get("thread_id") or not run.get("last_checkpoint_id"):
        raise RunLogError(f"run {rid} has no checkpoint to fork from (it was recorded without a checkpointer)")
    start = {"configurable": {"thread_id": run["thread_id"], "checkpoint_ns": "",
                              "checkpoint_id": run["last_checkpoint_id"]}}
    chain = branch(graph, start)
    if not chain:
        raise RunLogError(f"checkpoint {run['last_checkpoint_id']} of run {rid} is not in the checkpointer "
                          f"({getattr(store, 'checkpoints_path', 'checkpointer')})")
    idx = next((i for i, s in enumerate(chain) if node in s.next), None)
    if idx is None:
        ran = sorted({n for s in chain for n in s.next})
        raise RunLogError(f"node {node!r} never ran in run {rid}; it ran: {', '.join(ran)}")
    target = chain[idx]
    writer = chain[idx + 1].next[0] if idx + 1 < len(chain) and chain[idx + 1].next else None

    new_run = new_id()
    values["run_id"] = new_run
    request = run.get("request") or {}
    merged = {**(request.get("overrides") or {}), **overrides}
    ctx = rec.context(now=request.get("now"), **merged)
    method = "update_state"
    graph_input: Any = None
    try:
        cfg = graph.update_state(target.config, values, as_node=writer)
        if node not in graph.get_state(cfg).next:
            raise InvalidUpdateError(f"{writer} routes with Command; {node} is not next after the update")
    except InvalidUpdateError:
        method, graph_input, cfg = "command", Command(update=values), target.config
    config = {**rec._config(ctx, run["thread_id"]), "configurable": dict(cfg["configurable"])}
    fork_info = {"node": node, "edit": edit, "from_run_id": rid,
                 "from_checkpoint_id": target.config["configurable"]["checkpoint_id"], "as_node": writer,
                 "method": method}
    recorded = RecordedRun(store, graph, graph_input=graph_input, config=config, ctx=ctx, run_id=new_run,
                           user_id=run.get("user_id"), dataset=run.get("dataset"), kind="fork", parent_run_id=rid,
                           request={"now": ctx.env.now.isoformat(), "overrides": merged}, fork=fork_info)
    out = recorded.run()
    return {**out, "run_id": out.get("run_id", new_run), "fork": fork_info}
