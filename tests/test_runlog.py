"""The SQLite run log: schema and WAL, what a recorded run holds, errors, incomplete runs (including a
process killed by SIGKILL mid-run), and the optional tracing callbacks."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from runlog.callbacks import OTelCallbackHandler, make_callbacks
from runlog.settings import TraceSettings
from runlog.store import SCHEMA_VERSION, RunLog, RunLogError, RunNotFoundError, owner_token
from tests.graph_fakes import make_model
from tests.test_runlog_support import NOW, kill_when, make_app, user_id

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One recorded run: (store, app, model, output)."""
    store = RunLog(tmp_path_factory.mktemp("runlog") / "runs.sqlite")
    model = make_model(k=2)
    rec = make_app(store, model)
    out = rec.recommend(user_id(), now=NOW)
    return store, rec, model, out


def test_schema_is_versioned_and_wal(tmp_path):
    store = RunLog(tmp_path / "r.sqlite")
    assert store.journal_mode == "wal"
    assert store.schema_version == SCHEMA_VERSION == 3
    meta = dict(store._query("SELECT key, value FROM meta"))
    assert meta["schema_version"] == "3"
    assert store._query("PRAGMA synchronous")[0][0] == 2  # FULL
    store.close()
    # a file from a newer IntentRec is refused, not silently downgraded
    conn = sqlite3.connect(tmp_path / "r.sqlite")
    conn.execute("PRAGMA user_version = 7")
    conn.commit()
    conn.close()
    with pytest.raises(RunLogError, match="schema 7 is newer"):
        RunLog(tmp_path / "r.sqlite")
    (tmp_path / "junk.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(RunLogError, match="not a readable run log"):
        RunLog(tmp_path / "junk.sqlite")


def test_run_row_context_and_output(logged):
    store, rec, model, out = logged
    run = store.get_run(out["run_id"])
    assert run["status"] == out["status"] == "ok"
    assert run["kind"] == "recommend" and run["user_id"] == user_id() and run["dataset"] == "completejourney"
    assert run["thread_id"] and run["last_checkpoint_id"] and run["ended_at"] and run["wall_s"] > 0
    ctx = run["context"]
    assert ctx["models"]["explainer"] == "scripted" and ctx["models"]["judge"] == "scripted"
    expl = ctx["prompts"]["explainer"]
    tpl = rec.prompts.get("explainer")
    assert expl == {"name": "explainer", "version": tpl.version, "sha256": tpl.sha256[:16], "path": str(tpl.path)}
    assert ctx["settings"]["n_tags"] == 2 and ctx["env"]["now"].startswith("2017-10-01")
    assert run["request"]["now"].startswith("2017-10-01")
    assert store.recommendations(out["run_id"]) == json.loads(json.dumps(out["recommendations"]))
    assert run["output"]["status"] == "ok" and {t["tag"] for t in run["output"]["tags"]} == {
        t["tag"] for t in out["tags"]}


def test_every_model_call_is_logged_with_prompt_raw_parsed(logged):
    store, rec, model, out = logged
    calls = store.calls(out["run_id"])
    assert len(calls) == len(model.calls) == 13  # 1 planner, 2 experts, 1 arbiter, 1 style, 3 explain, 2+3 judge
    by_node = {}
    for c in calls:
        by_node.setdefault(c["node"], []).append(c)
    assert {k: len(v) for k, v in by_node.items()} == {"planner": 1, "expert": 2, "arbiter": 1, "style": 1,
                                                       "explain": 3, "joint_evaluator": 5}
    for c in calls:
        assert c["messages"][0]["role"] == "system" and c["messages"][-1]["role"] == "human"
        assert json.loads(c["raw"]) == c["parsed"]
        assert c["attempts"] == 1 and c["prompt_tokens"] > 0 and c["completion_tokens"] > 0
        assert c["prompt_sha256"] and c["prompt_path"].endswith(f"{c['prompt_name']}.prompt")
        assert c["task_id"] and c["error"] is None
        # prompt tokens served from the backend's prefix cache, in their own column (0: scripted model)
        assert c["cached_tokens"] == c["record"]["cached_tokens"] == 0
    # the rendered prompt is exactly what the model received
    judge_texts = {"\n".join(str(m.content) for m in call.messages) for call in model.calls}
    for c in by_node["joint_evaluator"]:
        assert "\n".join(m["content"] for m in c["messages"]) in judge_texts


def test_tasks_tree_and_checkpoint_refs(logged):
    store, rec, model, out = logged
    tasks = store.tasks(out["run_id"])
    top = [t["node"] for t in tasks if t["parent_task_id"] is None]
    assert top == ["prepare", "planner", "expert", "expert", "arbiter", "judge_tags", "tag_gate", "retrieve",
                   "style", "explain", "explain", "explain", "judge_prep", "judge_explanations", "explain_gate", "emit"]
    judge_tags = next(t for t in tasks if t["node"] == "judge_tags")
    inner = [t["node"] for t in tasks if t["parent_task_id"] == judge_tags["task_id"]]
    assert inner == ["rule_evaluators", "joint_evaluator", "joint_evaluator", "senior_reviewer"]
    assert all(t["ended_at"] and t["wall_s"] is not None and t["error"] is None for t in tasks)
    assert all(t["input_ref"]["checkpoint_id"] for t in tasks)
    expert_inputs = [t["input"]["persona"]["name"] for t in tasks if t["node"] == "expert"]
    assert sorted(expert_inputs) == sorted(p["name"] for p in out["personas"])
    assert next(t for t in tasks if t["node"] == "emit")["result"]["status"] == "ok"


def test_verdicts_and_requests_per_judge_pass(logged):
    store, rec, model, out = logged
    gs = store.graph_set(out["run_id"])
    assert gs["source"] == "graph" and gs["producer_run_id"] == out["run_id"] and gs["mode"] == "joint"
    js = store.judgements(gs["set_id"])
    assert [(j["pass_no"], j["kind"]) for j in js] == [(1, "tag")] * 2 + [(2, "explanation")] * 3
    for j in js:
        assert j["request"]["subject_id"] == j["subject_id"] == j["verdict"]["subject_id"]
        assert j["grade"] == j["verdict"]["grade"] == "S"
    assert {j["subject_id"] for j in js if j["kind"] == "explanation"} == {
        f"expl:{r['item_id']}" for r in out["recommendations"]}


def test_stream_is_recorded_too(logged):
    store, rec, model, out = logged
    updates = list(rec.stream(user_id(), now=NOW, n_tags=1))
    emit = next(u["emit"] for ns, u in updates if not ns and "emit" in u)
    prepare = next(u["prepare"] for ns, u in updates if not ns and "prepare" in u)
    run = store.get_run(prepare["run_id"])
    assert run["status"] == emit["status"] == "ok" and run["context"]["settings"]["n_tags"] == 1
    assert run["request"]["overrides"] == {"n_tags": 1}
    assert len(store.recommendations(run["run_id"])) == len(emit["recommendations"])


def test_failed_node_marks_run_error(tmp_path):
    from graphs.recommend import NodeError
    from intentrec.service import IntentRec
    from tests.test_runlog_support import dataset

    class Broken:
        def search(self, *a, **k):
            raise RuntimeError("index file vanished")

    store = RunLog(tmp_path / "r.sqlite")
    rec = IntentRec(dataset=dataset(), retriever=Broken(), models={"default": make_model(k=2)}, runlog=store,
                    n_personas=2, n_tags=2, n_items=3)

    with pytest.raises(NodeError, match="retrieve"):
        rec.recommend(user_id(), now=NOW)
    (run,) = store.runs()
    assert run["status"] == "error" and run["error_node"] == "retrieve"
    assert "index file vanished" in run["error"]
    failed = [t for t in store.tasks(run["run_id"]) if t["error"]]
    assert [t["node"] for t in failed] == ["retrieve"]


def test_invalid_model_output_is_logged_with_every_attempt(tmp_path):
    """The planner answers garbage three times: the personas come from the user's categories (a
    counted ``llm_invalid`` drop), and the failed call is in the log with each raw attempt and the error."""
    from llm.scripted import by_schema

    store = RunLog(tmp_path / "r.sqlite")
    model = make_model(k=2, extra_rules=[by_schema("PlannerOutput", "not json at all")])
    out = make_app(store, model).recommend(user_id(), now=NOW)
    run = store.get_run(out["run_id"])
    assert run["status"] == out["status"] == "ok" and out["fallback"] is None
    assert all(p["name"].endswith(" shopper") for p in out["personas"]) and len(out["personas"]) == 2
    assert any(d["stage"] == "planner" and d["reason"] == "llm_invalid" for d in out["drops"])
    (call,) = store.calls(out["run_id"], node="planner")
    assert call["error"].startswith("model 'scripted' gave no valid PlannerOutput after 3 attempt(s)")
    assert call["attempts"] == 3 and call["parsed"] is None
    assert call["raw"].splitlines() == [f"[attempt {i}] not json at all" for i in (1, 2, 3)]
    from runlog.trace import build_trace

    planner = next(n for n in build_trace(store, out["run_id"])["tree"] if n["node"] == "planner")
    assert planner["call_errors"] == [call["error"]] and planner["attempts"] == 3


def test_unknown_run_id_and_prefixes(logged):
    store, rec, model, out = logged
    with pytest.raises(RunNotFoundError, match="unknown run id 'nope'"):
        store.get_run("nope")
    assert store.get_run(out["run_id"][:10])["run_id"] == out["run_id"]


def test_dead_writer_marks_run_incomplete(tmp_path):
    path = tmp_path / "r.sqlite"
    store = RunLog(path)
    mine = store.start_run(user_id="u1")
    dead = store.start_run(user_id="u2")
    elsewhere = store.start_run(user_id="u3")
    host, pid, ticks = owner_token().split(":")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with store._tx() as c:
        c.execute("UPDATE runs SET owner=? WHERE run_id=?", (f"{host}:{child.pid}:1", dead))
        c.execute("UPDATE runs SET owner=? WHERE run_id=?", (f"another-host:{pid}:{ticks}", elsewhere))
    again = RunLog(path)  # opening recovers
    status = {r["run_id"]: r["status"] for r in again.runs()}
    assert status == {mine: "running", dead: "incomplete", elsewhere: "running"}
    assert "ended before the run finished" in again.get_run(dead)["error"]


CRASH_SCRIPT = textwrap.dedent("""
    import sys
    from runlog.store import RunLog
    from tests.graph_fakes import make_model
    from tests.test_runlog_support import NOW, kill_when, make_app, user_id

    store = RunLog(sys.argv[1])
    first = make_app(store).recommend(user_id(), now=NOW)
    print("FIRST", first["run_id"], flush=True)
    make_app(store, make_model(k=2, latency_s=0.4)).recommend(user_id(), now=NOW)
    print("SECOND FINISHED", flush=True)
""")


def _counts(path: Path, run_id: str) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t} WHERE run_id=?", (run_id,)).fetchone()[0]
                for t in ("tasks", "calls", "recommendations")}
    finally:
        conn.close()


def test_sigkill_mid_run_leaves_readable_log_with_incomplete_run(tmp_path):
    path = tmp_path / "runs.sqlite"
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(path)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("FIRST"), proc.stderr.read()
    first = line.split()[1]
    before = _counts(path, first)

    def second_running():  # kill once the slow second run has logged a few calls
        conn = sqlite3.connect(path)
        row = conn.execute("SELECT r.run_id, COUNT(c.call_id) FROM runs r LEFT JOIN calls c ON c.run_id=r.run_id "
                           "WHERE r.status='running' GROUP BY r.run_id").fetchone()
        conn.close()
        return row[0] if row and row[1] >= 3 else None

    second = kill_when(proc, second_running, timeout_s=60, what="the second run")
    assert "SECOND FINISHED" not in proc.stdout.read()

    store = RunLog(path)
    assert store.integrity_check() == "ok"
    runs = {r["run_id"]: r for r in store.runs()}
    assert runs[first]["status"] == "ok"
    assert runs[second]["status"] == "incomplete" and runs[second]["ended_at"] is None
    assert _counts(path, first) == before and before["recommendations"] == 3  # nothing else lost
    calls = store.calls(second)
    assert len(calls) >= 3 and all(c["messages"] and c["parsed"] for c in calls)
    tasks = store.tasks(second)
    assert [t["node"] for t in tasks][:2] == ["prepare", "planner"]
    assert any(t["ended_at"] is None for t in tasks) or tasks[-1]["node"] != "emit"
    assert store.recommendations(second) == []
    # the checkpoints beside the log are readable too, up to the last step that finished
    ck = sqlite3.connect(store.checkpoints_path)
    assert ck.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert ck.execute("SELECT COUNT(*) FROM checkpoints WHERE thread_id=?",
                      (runs[second]["thread_id"],)).fetchone()[0] >= 2
    ck.close()
    # the last checkpoint the log names (what a fork resumes from) is on disk, with its state: both files
    # group-commit, and a checkpoint is logged only after the checkpointer has committed it
    last = runs[second]["last_checkpoint_id"]
    saved = store.checkpointer().get_tuple({"configurable": {"thread_id": runs[second]["thread_id"],
                                                             "checkpoint_ns": "", "checkpoint_id": last}})
    assert last and saved is not None and saved.checkpoint["id"] == last
    assert saved.checkpoint["channel_values"].get("shared_context")  # the state prepare wrote
    store.close()


def test_callbacks_off_by_default(monkeypatch):
    monkeypatch.delenv("INTENTREC_CALLBACKS", raising=False)
    assert TraceSettings().callback_names() == []
    assert make_callbacks() == []
    assert "langfuse" not in sys.modules
    with pytest.raises(RunLogError, match="unknown tracing callback 'datadog'"):
        make_callbacks(["datadog"])
    if "langfuse" not in sys.modules:
        import importlib.util

        if importlib.util.find_spec("langfuse") is None:
            with pytest.raises(RunLogError, match="pip install langfuse"):
                make_callbacks(["langfuse"])
    import langchain_core.tracers.langchain as lc_tracers

    made = []
    monkeypatch.setattr(lc_tracers, "LangChainTracer", lambda **kw: made.append(kw) or "tracer")  # no network
    monkeypatch.setenv("INTENTREC_CALLBACKS", "otel, langsmith")
    monkeypatch.setenv("INTENTREC_LANGSMITH_PROJECT", "recsys-dev")
    handlers = make_callbacks()
    assert isinstance(handlers[0], OTelCallbackHandler) and handlers[1] == "tracer"
    assert made == [{"project_name": "recsys-dev"}]


def _fake_tracer():
    """A tracer recording spans and their parents (OpenTelemetry's API without an SDK)."""
    from opentelemetry import trace

    class FakeSpan(trace.NonRecordingSpan):
        def __init__(self, name, parent):
            super().__init__(trace.INVALID_SPAN_CONTEXT)
            self.name, self.parent, self.attrs, self.ended, self.errors = name, parent, {}, False, []

        def set_attribute(self, k, v):
            self.attrs[k] = v

        def record_exception(self, exception, *a, **k):
            self.errors.append(exception)

        def end(self, end_time=None):
            self.ended = True

    class FakeTracer:
        def __init__(self):
            self.spans = []

        def start_span(self, name, context=None):
            parent = trace.get_current_span(context) if context is not None else None
            span = FakeSpan(name, parent if isinstance(parent, FakeSpan) else None)
            self.spans.append(span)
            return span

    return FakeTracer()


def test_otel_callback_spans_follow_the_graph(tmp_path):
    tracer = _fake_tracer()
    rec = make_app(RunLog(tmp_path / "r.sqlite"))
    rec.callbacks = [OTelCallbackHandler(tracer=tracer)]
    out = rec.recommend(user_id(), now=NOW)
    assert out["status"] == "ok"
    names = [s.name for s in tracer.spans]
    root = tracer.spans[0]
    assert root.parent is None and names.count("expert") == 2
    assert all(s.ended for s in tracer.spans)
    llm = [s for s in tracer.spans if s.name.startswith("llm ")]
    assert len(llm) == 13 and all(s.attrs["gen_ai.usage.input_tokens"] > 0 for s in llm)
    planner = next(s for s in tracer.spans if s.name == "planner")
    assert planner.attrs["langgraph.node"] == "planner" and planner.attrs["intentrec.run_id"] == out["run_id"]
    p = llm[0]
    while p.parent is not None:
        p = p.parent
    assert p is root


def test_recommend_returns_the_output_keys_with_the_run_log_on_and_off(tmp_path):
    from graphs.state import OutputState

    on = make_app(RunLog(tmp_path / "runs.sqlite")).recommend(user_id(), now=NOW)
    off = make_app(None).recommend(user_id(), now=NOW)
    assert set(on) == set(off)
    assert set(on) <= set(OutputState.__annotations__) and {"recommendations", "tags", "personas"} <= set(on)
    assert "shared_context" not in on and "candidates" not in on  # internal state stays inside
    assert [r["item_id"] for r in on["recommendations"]] == [r["item_id"] for r in off["recommendations"]]


def test_corrupted_pages_are_one_run_log_error(tmp_path, monkeypatch, capsys):
    path = tmp_path / "runs.sqlite"
    store = RunLog(path)
    for i in range(300):  # enough rows for the runs table to span many pages
        store.start_run(run_id=f"r{i:04d}", user_id=str(i), dataset="csv:x", request={"note": "x" * 200})
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    raw = bytearray(path.read_bytes())
    page = 4096
    assert len(raw) > 20 * page
    n = len(raw) // page
    for p in range(n // 2, n):  # the schema pages survive; the later half (runs rows) is garbage
        raw[p * page:(p + 1) * page] = bytes([0xA5]) * page
    path.write_bytes(bytes(raw))
    with pytest.raises(RunLogError, match=r"runs.sqlite: the run log is damaged \(database disk image is malformed\)"):
        RunLog(path)  # before the fix: sqlite3.DatabaseError from mark_incomplete
    monkeypatch.setenv("INTENTREC_RUNLOG_PATH", str(path))
    from tests.test_runlog_support import run_cli

    code, out, err = run_cli(["runs", "list"], monkeypatch, capsys)
    assert code == 2 and "the run log is damaged" in out + err and "Traceback" not in out + err


def test_compact_caps_as_plain_then_cap_would_without_converting_what_it_cuts():
    """``compact`` in one pass equals capping the full ``plain`` copy (the reference below), for
    pydantic models, messages, dataclasses, tuples, sets, dates, paths and non-string keys; and it
    never converts a value past the item cap."""
    import dataclasses
    from datetime import date

    from langchain_core.messages import HumanMessage
    from langgraph.types import Overwrite
    from pydantic import BaseModel

    from runlog.store import compact, dumps, plain

    def reference(obj, max_str, max_items, depth):
        if isinstance(obj, str):
            return obj if len(obj) <= max_str else obj[: max_str - 1] + "…"
        if depth <= 0 and isinstance(obj, dict | list):
            return f"<{type(obj).__name__} of {len(obj)}>"
        if isinstance(obj, dict):
            out = {k: reference(v, max_str, max_items, depth - 1) for k, v in list(obj.items())[:max_items]}
            if len(obj) > max_items:
                out["…"] = f"{len(obj) - max_items} more keys"
            return out
        if isinstance(obj, list):
            out_l = [reference(v, max_str, max_items, depth - 1) for v in obj[:max_items]]
            if len(obj) > max_items:
                out_l.append(f"… {len(obj) - max_items} more")
            return out_l
        return obj

    class Tag(BaseModel):
        tag: str
        score: float

    @dataclasses.dataclass
    class Box:
        when: date
        where: Path
        items: tuple

    state = {"tags": [Tag(tag="t" * 50, score=0.5) for _ in range(7)], 3: "int key", True: "bool key", "msg": HumanMessage("x" * 90),
             "box": Box(date(2017, 10, 1), Path("/a/b"), tuple(range(9))), "set": {"only"},
             "over": Overwrite(["a", "b", "c", "d", "e", "f"]), "deep": {"a": {"b": {"c": {"d": [1, [2, [3]]]}}}},
             "none": None, "flag": True, "other": object.__new__(type("Odd", (), {"__repr__": lambda s: "odd!"}))}
    for caps in [(20, 3, 3), (400, 60, 6), (5, 1, 1), (10, 2, 0)]:
        capped = compact(state, max_str=caps[0], max_items=caps[1], depth=caps[2])
        assert capped == reference(plain(state), *caps), caps
        # its keys are str throughout, so the run log writes it without looking for others
        assert dumps(capped, str_keys=True) == dumps(capped) == dumps(plain(capped)), caps

    class Exploding(BaseModel):
        def model_dump(self, **kw):  # noqa: ARG002
            raise AssertionError("converted a value the cap cuts")

    assert compact([1, 2, Exploding()], max_items=2) == [1, 2, "… 1 more"]


def test_dumps_writes_what_json_of_plain_writes():
    """``dumps`` lets the C encoder walk plain values and converts only the rest, with the same text
    as ``json.dumps(plain(x))``: models and messages nested in plain containers, dataclasses, sets,
    dates, tuples, and keys that ``json`` would spell differently (``True``, ``None``, a tuple, an int)."""
    import dataclasses
    from datetime import date, datetime

    from langchain_core.messages import AIMessage, HumanMessage
    from pydantic import BaseModel

    from runlog.store import dumps, plain

    class Tag(BaseModel):
        tag: str
        when: date

    @dataclasses.dataclass
    class Box:
        where: Path
        keys: dict

    def ref(x):
        return json.dumps(plain(x), ensure_ascii=False, separators=(",", ":"))

    values = [
        {"tags": [Tag(tag="é", when=date(2017, 10, 1))], "msgs": [HumanMessage("hi"), AIMessage("yo")]},
        [HumanMessage("x"), {"set": {"a"}, "t": (1, 2, (3,)), "at": datetime(2017, 1, 2, 3, 4)}],
        {"deep": [{"box": Box(Path("/a"), {True: 1, None: 2, 3: "x"})}]},
        {True: "t", None: "n", 1.5: "f", 3: "i"},
        {"nested": {(1, 2): "tuple key"}},
        ({"a": 1}, [2, {"b": float("inf")}]),
        "plain text", 3, 2.5, True,
    ]
    for v in values:
        assert dumps(v) == ref(v), v
    assert dumps(None) is None
    assert json.loads(dumps({True: 1})) == {"True": 1}  # plain's spelling, not json's "true"


def _task(store, rid, i):
    store.task_started(rid, task_id=f"t{i}", seq=i, node="n", namespace="", parent_task_id=None,
                       input_ref=None, input_=None)


def test_event_rows_are_group_committed_in_order_and_read_back(tmp_path):
    """Task and call rows are queued and committed by the writer thread: another connection sees them
    without a flush, this connection's reads and later writes see them at once, in order."""
    store = RunLog(tmp_path / "runs.sqlite")
    rid = store.start_run(user_id="1")
    for i in range(50):
        _task(store, rid, i)
        store.task_finished(rid, task_id=f"t{i}", wall_s=0.5, result={"i": i}, error=None)
    assert [t["seq"] for t in store.tasks(rid)] == list(range(50))  # read-your-writes
    assert all(t["result"] == {"i": t["seq"]} and t["wall_s"] == 0.5 for t in store.tasks(rid))
    _task(store, rid, 50)
    store.finish_run(rid, status="ok")  # a synchronous write commits the queue first
    other = sqlite3.connect(tmp_path / "runs.sqlite")
    assert other.execute("SELECT COUNT(*) FROM tasks WHERE run_id=?", (rid,)).fetchone()[0] == 51
    store.add_call(rid, node="expert", subject=None, prompt=None, messages=[], raw="{}", parsed={"a": 1},
                   record=None, error=None, latency_s=0.1)
    deadline = time.monotonic() + 10
    while other.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 0:  # the writer, unprompted
        assert time.monotonic() < deadline, "the writer thread never committed the queued call"
        time.sleep(0.01)
    other.close()
    assert store.write_errors == 0
    store.close()
    with pytest.raises(RunLogError, match="closed"):
        _task(store, rid, 99)


def test_a_failing_queued_row_is_counted_and_logged_and_the_group_kept(tmp_path):
    from structlog.testing import capture_logs

    store = RunLog(tmp_path / "runs.sqlite")
    rid = store.start_run(user_id="1")
    with capture_logs() as logs:
        with store._lock:  # hold the writer off, so the three rows are one group
            _task(store, rid, 1)
            store._enqueue("INSERT INTO no_such_table VALUES (?)", (1,))
            _task(store, rid, 2)
        store.flush()
    assert [t["task_id"] for t in store.tasks(rid)] == ["t1", "t2"]
    assert store.write_errors == 1
    assert [e["event"] for e in logs] == ["run log write failed"] and "no_such_table" in logs[0]["error"]
    store.close()


EXIT_SCRIPT = textwrap.dedent("""
    import sys
    from runlog.store import RunLog

    store = RunLog(sys.argv[1])
    rid = store.start_run(user_id="1")
    store._lock.acquire()  # the writer thread cannot commit: only interpreter exit can
    for i in range(20):
        store.task_started(rid, task_id=f"t{i}", seq=i, node="n", namespace="", parent_task_id=None,
                           input_ref=None, input_=None)
    print(rid, store._group.pending, flush=True)
""")


def test_interpreter_exit_commits_the_queue(tmp_path):
    script = tmp_path / "exit.py"
    script.write_text(EXIT_SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "runs.sqlite")], cwd=ROOT, text=True,
                         capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 0, out.stderr
    rid, queued = out.stdout.split()
    assert int(queued) == 20  # still queued when the script ended
    assert [t["seq"] for t in RunLog(tmp_path / "runs.sqlite").tasks(rid)] == list(range(20))


def test_an_idle_writer_thread_ends_and_the_next_row_starts_another(tmp_path, monkeypatch):
    import runlog.group_commit as group_commit

    monkeypatch.setattr(group_commit, "WRITER_IDLE_S", 0.05)
    store = RunLog(tmp_path / "runs.sqlite")
    rid = store.start_run(user_id="1")
    other = sqlite3.connect(tmp_path / "runs.sqlite")
    for i in range(2):
        _task(store, rid, i)
        first = store._group.writer
        assert first is not None and first.is_alive()
        first.join(timeout=10)  # it commits the row, waits WRITER_IDLE_S, and ends
        assert not first.is_alive() and store._group.writer is None
        assert other.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == i + 1
    other.close()
    store.close()
