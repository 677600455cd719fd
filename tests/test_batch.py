"""Batch jobs: exactly-once bookkeeping, kill and resume in a real subprocess, recorded failures and
retries, bounded concurrency, the CLI, and Ray parity with the in-process engine."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from batch.runner import BatchError, BatchSpec, execute, select_users
from runlog.batches import BatchNotFoundError, BatchStore
from runlog.store import FINAL_OK, RunLog
from tests.test_runlog_support import NOW, dataset, kill_when, make_app, run_cli

ROOT = Path(__file__).resolve().parent.parent
FACTORY = "tests.batch_support:slow_factory"


def users(n: int, seed: int = 0) -> list[str]:
    from datetime import datetime

    picked, _ = select_users(dataset(), n=n, now=datetime(2017, 10, 1), seed=seed)
    return picked


def new_batch(store: RunLog, ids: list[str], **spec) -> str:
    return BatchStore(store).create(ids, spec=BatchSpec(now=NOW, factory=FACTORY, **spec).model_dump())


def ok_runs_per_user(store: RunLog) -> Counter:
    return Counter(r["user_id"] for r in store.runs(kind="recommend") if r["status"] in FINAL_OK)


# ----- bookkeeping --------------------------------------------------------------------------------

def test_claim_is_exclusive_and_reconcile_settles_dead_writers(tmp_path):
    store = RunLog(tmp_path / "r.sqlite")
    b = BatchStore(store)
    bid = b.create(["u1", "u2", "u3", "u1"], spec={})
    assert b.counts(bid) == {"pending": 3, "running": 0, "done": 0, "failed": 0, "total": 3}  # repeat dropped
    c1 = b.claim(bid, "u1")
    assert c1 is not None and c1.attempt == 1
    assert b.claim(bid, "u1") is None  # nobody takes a claimed user again
    c2, c3 = b.claim(bid, "u2"), b.claim(bid, "u3")
    # pretend the writer died: u1's run had finished, u2's was cut short, u3's never started
    store.start_run(run_id=c1.run_id, user_id="u1")
    store.finish_run(c1.run_id, status="ok")
    store.start_run(run_id=c2.run_id, user_id="u2")
    with store._tx() as c:
        c.execute("UPDATE batch_items SET owner='nohost:1:1' WHERE batch_id=?", (bid,))
        c.execute("UPDATE runs SET owner=? WHERE run_id=?", (f"{__import__('socket').gethostname()}:999999:1",
                                                            c2.run_id))
    # owners on another host are left alone (they may still be working)
    assert b.reconcile(bid) == {"done": 0, "failed": 0, "pending": 0}
    host = __import__("socket").gethostname()
    with store._tx() as c:
        c.execute("UPDATE batch_items SET owner=? WHERE batch_id=?", (f"{host}:999999:1", bid))
    assert b.reconcile(bid) == {"done": 1, "failed": 0, "pending": 2}
    assert store.get_run(c2.run_id)["status"] == "incomplete"
    st = {r["user_id"]: (r["status"], r["run_status"]) for r in b.items(bid)}
    assert st == {"u1": ("done", "ok"), "u2": ("pending", "incomplete"), "u3": ("pending", None)}
    assert b.pending_users(bid) == ["u2", "u3"]
    assert c3 is not None and b.claim(bid, "u3").attempt == 2
    with pytest.raises(BatchNotFoundError, match="unknown batch id 'nope'"):
        b.get("nope")


def test_schema_v1_file_is_migrated_with_its_runs(tmp_path):
    from runlog.store import _SCHEMA_V1, _statements

    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    for stmt in _statements(_SCHEMA_V1):
        conn.execute(stmt)
    conn.execute("INSERT INTO runs(run_id, kind, status, started_at) VALUES ('r1','recommend','ok','2026-01-01')")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store = RunLog(path)
    assert store.schema_version == 3
    assert store.get_run("r1")["status"] == "ok"
    assert BatchStore(store).create(["a"], spec={})  # the new tables exist
    cols = {r[1] for r in store._query("PRAGMA table_info(calls)")}
    assert "cached_tokens" in cols  # v3


def test_select_users(tmp_path):
    from datetime import datetime

    a, report = select_users(dataset(), n=5, now=datetime(2017, 10, 1), seed=3)
    assert a == users(5, seed=3) and len(a) == 5 and a == sorted(a)
    assert users(5, seed=4) != a
    assert report["no_history_before_now"] > 0  # counted, not silently dropped
    f = tmp_path / "u.txt"
    f.write_text("# a comment\n1\n\n2\n1\nno-such-user\n")
    got, rep = select_users(dataset(), user_file=f)
    assert got == ["1", "2", "no-such-user"] and rep == {"repeated_in_file": 1}
    with pytest.raises(BatchError, match="choose the users"):
        select_users(dataset())
    with pytest.raises(BatchError, match="only .* users have history"):
        select_users(dataset(), n=10**6, now=datetime(2017, 10, 1))


# ----- running ------------------------------------------------------------------------------------

def test_failures_are_recorded_and_retried_without_stopping_the_batch(tmp_path):
    store = RunLog(tmp_path / "r.sqlite")
    rec = make_app(store)
    ids = users(3)
    bid = new_batch(store, [ids[0], "no-such-user", ids[1], ids[2]])
    s = execute(store, bid, rec=rec, concurrency=2)
    assert s["counts"]["done"] == 3 and s["counts"]["failed"] == 1 and s["counts"]["pending"] == 0
    assert s["failed"] == [{"user_id": "no-such-user",
                            "error": "UnknownUserError: unknown user 'no-such-user' in dataset 'completejourney'"}]
    assert BatchStore(store).get(bid)["status"] == "finished"
    ok_run = next(r["run_id"] for r in store.runs() if r["status"] == "ok")
    assert s["run_log_write_errors"] == 0 and len(store.tasks(ok_run)) > 5
    # resume with nothing missing runs nothing; --retry-failed runs the failed user again
    again = execute(store, bid, rec=rec)
    assert again["this_run"]["done"] == again["this_run"]["failed"] == 0
    retried = execute(store, bid, rec=rec, retry_failed=True)
    assert retried["this_run"]["retried"] == 1 and retried["this_run"]["failed"] == 1
    item = BatchStore(store).items(bid, status="failed")[0]
    assert item["attempts"] == 2 and item["user_id"] == "no-such-user"
    assert ok_runs_per_user(store) == Counter({u: 1 for u in ids})


def test_concurrency_is_bounded(tmp_path):
    store = RunLog(tmp_path / "r.sqlite")
    rec = make_app(store)
    lock, state = threading.Lock(), {"now": 0, "max": 0}
    real = rec.recommend

    def counting(*a, **k):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        try:
            time.sleep(0.2)
            return real(*a, **k)
        finally:
            with lock:
                state["now"] -= 1

    rec.recommend = counting
    bid = new_batch(store, users(8))
    s = execute(store, bid, rec=rec, concurrency=3)
    assert s["counts"]["done"] == 8
    assert state["max"] == 3


def _count_done(path: Path, bid: str) -> int:
    conn = sqlite3.connect(path, timeout=30)
    try:
        return conn.execute("SELECT COUNT(*) FROM batch_items WHERE batch_id=? AND status='done'", (bid,)).fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def _batch_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    conn = sqlite3.connect(path, timeout=30)
    try:
        return [r[0] for r in conn.execute("SELECT batch_id FROM batches")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


@pytest.mark.slow
def test_kill_midway_then_resume_finishes_exactly_the_missing_users(tmp_path):
    """A 20-user batch in a subprocess (scripted model, 30 ms per call) is SIGKILLed midway; resume
    completes it: exactly 20 completed runs, one per user, none lost, none twice."""
    path = tmp_path / "runs.sqlite"
    env = {**os.environ, "INTENTREC_TEST_LATENCY_S": "0.03", "INTENTREC_LOG_LEVEL": "ERROR"}
    cmd = [sys.executable, "app.py", "batch", "--users", "20", "--now", NOW, "--factory", FACTORY,
           "--runlog", str(path), "--concurrency", "2", "--json"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def five_done():
        ids = _batch_ids(path)
        return ids[0] if ids and _count_done(path, ids[0]) >= 5 else None

    bid = kill_when(proc, five_done, what="the batch")
    done_before = _count_done(path, bid)
    assert 5 <= done_before < 20, done_before

    res = subprocess.run([sys.executable, "app.py", "batch", "--resume", bid[:6], "--runlog", str(path), "--json"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["counts"] == {"pending": 0, "running": 0, "done": 20, "failed": 0, "total": 20}
    assert summary["this_run"]["done"] + done_before + summary["this_run"]["settled_from_previous"]["done"] == 20

    store = RunLog(path)
    items = BatchStore(store).items(bid)
    assert len({i["user_id"] for i in items}) == 20
    per_user = ok_runs_per_user(store)
    assert set(per_user) == {i["user_id"] for i in items}  # none lost
    assert all(n == 1 for n in per_user.values())  # none twice
    assert sum(per_user.values()) == 20
    # every item points at its own completed run
    assert all(store.get_run(i["run_id"])["status"] == "ok" and store.get_run(i["run_id"])["user_id"] == i["user_id"]
               for i in items)
    # the run cut short by the kill is kept, marked incomplete
    statuses = Counter(r["status"] for r in store.runs())
    assert statuses["ok"] == 20 and statuses["incomplete"] >= 1
    assert store.integrity_check() == "ok"


def _json_out(out: str):
    """The JSON document the command printed (in process, structlog's default logger shares stdout)."""
    start = 0 if out.startswith(("{", "[")) else out.index("\n{") + 1
    return json.loads(out[start:])


def test_cli_batch_and_batches(tmp_path, monkeypatch, capsys):
    path = tmp_path / "r.sqlite"
    ufile = tmp_path / "users.txt"
    ufile.write_text("\n".join([*users(2), "ghost"]) + "\n")
    code, out, err = run_cli(["batch", "--user-file", str(ufile), "--now", NOW, "--factory", FACTORY,
                              "--runlog", str(path), "--json"], monkeypatch, capsys)
    assert code == 0, err
    s = _json_out(out)
    assert s["counts"]["done"] == 2 and s["counts"]["failed"] == 1
    assert s["failed"][0]["user_id"] == "ghost" and "UnknownUserError" in s["failed"][0]["error"]
    code, out, err = run_cli(["batches", s["batch_id"], "--status", "failed", "--json"] + ["--runlog", str(path)],
                             monkeypatch, capsys)
    assert code == 0 and [i["user_id"] for i in _json_out(out)["items"]] == ["ghost"]
    code, out, err = run_cli(["batch", "--resume", "zzz", "--runlog", str(path)], monkeypatch, capsys)
    assert code == 2 and "unknown batch id 'zzz'" in err
    code, out, err = run_cli(["batch", "--runlog", str(path), "--factory", FACTORY], monkeypatch, capsys)
    assert code == 2 and "choose the users" in err
    code, out, err = run_cli(["batch", "--users", "2", "--concurrency", "0", "--factory", FACTORY, "--now", NOW,
                              "--runlog", str(path)], monkeypatch, capsys)
    assert code == 2 and "--concurrency must be at least 1" in err


def _recs(store: RunLog, bid: str) -> dict[str, list[tuple]]:
    out = {}
    for item in BatchStore(store).items(bid):
        out[item["user_id"]] = [(r["item_id"], r["title"], r["tag"], r["persona"], r["grade"], r["explanation"])
                                for r in store.recommendations(item["run_id"])]
    return out


@pytest.mark.slow
def test_ray_matches_in_process(tmp_path):
    """The same 10 users on a local Ray instance (2 partitions) and in process: identical output."""
    import ray  # noqa: F401  - a test dependency: scripts/test.sh installs the [ray] extra

    ids = users(10, seed=7)
    local = RunLog(tmp_path / "local.sqlite")
    bid_local = new_batch(local, ids)
    execute(local, bid_local, rec=make_app(local), concurrency=2)

    remote = RunLog(tmp_path / "ray.sqlite")
    bid_ray = new_batch(remote, ids)
    s = execute(remote, bid_ray, engine="ray", concurrency=2, partitions=2)
    assert s["counts"]["done"] == 10 and s["engine"] == "ray"
    a, b = _recs(local, bid_local), _recs(remote, bid_ray)
    assert set(a) == set(b) == set(ids)
    assert all(len(v) == 3 for v in a.values())
    assert a == b
    # the runs were written by other processes (the Ray workers), not this one
    owners = {r["owner"].split(":")[1] for r in remote.runs()}
    assert str(os.getpid()) not in owners and len(owners) >= 1


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


@pytest.mark.slow
def test_workers_are_exactly_once_across_a_sigkill_of_one_worker(tmp_path):
    """``batch --workers 2``: two processes claim users from one run log. One worker is SIGKILLed
    midway; the parent settles its user, starts a replacement, and the batch ends with exactly one
    completed run per user, the killed run kept as incomplete."""
    path = tmp_path / "runs.sqlite"
    env = {**os.environ, "INTENTREC_TEST_LATENCY_S": "0.03", "INTENTREC_LOG_LEVEL": "ERROR"}
    cmd = [sys.executable, "app.py", "batch", "--users", "20", "--now", NOW, "--factory", FACTORY,
           "--runlog", str(path), "--workers", "2", "--json"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        victim = None
        while time.monotonic() < deadline and victim is None:
            assert proc.poll() is None, proc.stderr.read()
            ids = _batch_ids(path)
            kids = _children(proc.pid)
            if ids and len(kids) == 2 and _count_done(path, ids[0]) >= 4:
                victim = kids[0]
            else:
                time.sleep(0.05)
        assert victim is not None, "the workers never got going"
        os.kill(victim, 9)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["workers"] == 2
    assert summary["counts"] == {"pending": 0, "running": 0, "done": 20, "failed": 0, "total": 20}
    assert summary["this_run"]["restarted"] == 1
    store = RunLog(path)
    bid = _batch_ids(path)[0]
    items = BatchStore(store).items(bid)
    per_user = ok_runs_per_user(store)
    assert set(per_user) == {i["user_id"] for i in items} and all(n == 1 for n in per_user.values())
    owners = {i["owner"] for i in items}
    assert len(owners) >= 2  # more than one process did the work
    statuses = Counter(r["status"] for r in store.runs())
    assert statuses["ok"] == 20 and statuses["incomplete"] >= 1
    assert store.integrity_check() == "ok"


def test_batch_run_log_durability_and_worker_command(tmp_path):
    from batch.workers import threads_per_worker, worker_command
    from runlog.store import open_runlog

    store = open_runlog(tmp_path / "r.sqlite", durability="normal")
    assert store.durability == "normal" and store._query("PRAGMA synchronous")[0][0] == 1  # NORMAL
    assert open_runlog(tmp_path / "r.sqlite")._query("PRAGMA synchronous")[0][0] == 2  # FULL elsewhere
    # the checkpoints beside the log follow the same setting
    assert store.checkpointer().conn.execute("PRAGMA synchronous").fetchone()[0] == 1
    assert open_runlog(tmp_path / "r2.sqlite").checkpointer().conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    cmd = worker_command(store.path, "b1", concurrency=3, threads=1, durability="normal")
    assert cmd[1:3] == ["-m", "batch.worker"] and cmd[cmd.index("--durability") + 1] == "normal"
    assert cmd[cmd.index("--concurrency") + 1] == "3" and cmd[cmd.index("--threads") + 1] == "1"
    assert threads_per_worker(1) >= threads_per_worker(2) >= 1
    with pytest.raises(BatchError, match="--workers must be at least 1"):
        execute(store, BatchStore(store).create(["u1"], spec=BatchSpec(now=NOW, factory=FACTORY).model_dump()),
                workers=0)


def test_a_batch_pins_its_lora_adapter_and_the_eval_reuses_only_the_same_one(tmp_path, monkeypatch):
    """The adapter is resolved when the batch is created (path and +sha), a resume builds with it
    whatever the environment says later, and a batch is reused only for the same adapter."""
    from batch.runner import pin_spec
    from evals.tag_eval import find_batch

    monkeypatch.delenv("INTENTREC_LLM_CONFIG", raising=False)
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.write_bytes(b"adapter a")
    b.write_bytes(b"adapter b")
    monkeypatch.setenv("INTENTREC_LLM_ADAPTER", str(a))
    spec_a = pin_spec(BatchSpec(now=NOW, index_cutoff=NOW))
    assert spec_a.adapter == str(a.resolve())
    assert spec_a.adapter_id == "+" + hashlib.sha256(b"adapter a").hexdigest()[:12]
    monkeypatch.setenv("INTENTREC_LLM_ADAPTER", "none")
    assert pin_spec(BatchSpec(now=NOW)).adapter == "none"
    assert pin_spec(BatchSpec(now=NOW)).adapter_id is None
    # a factory or a server backend runs no local adapter: nothing is pinned
    assert pin_spec(BatchSpec(now=NOW, factory=FACTORY)).adapter is None
    assert pin_spec(BatchSpec(now=NOW, backend="openai", base_url="http://127.0.0.1:9/v1")).adapter is None
    # an already pinned spec keeps its adapter (a resume must not re-resolve it from the environment)
    assert pin_spec(spec_a) == spec_a

    store = RunLog(tmp_path / "runs.sqlite")
    ids = ["1", "2"]
    bid = BatchStore(store).create(ids, spec=spec_a.model_dump())
    assert find_batch(store, ids, spec_a.model_dump()) == bid
    monkeypatch.setenv("INTENTREC_LLM_ADAPTER", str(b))
    assert find_batch(store, ids, pin_spec(BatchSpec(now=NOW, index_cutoff=NOW)).model_dump()) is None
    monkeypatch.setenv("INTENTREC_LLM_ADAPTER", "none")
    assert find_batch(store, ids, pin_spec(BatchSpec(now=NOW, index_cutoff=NOW)).model_dump()) is None
    # same path, new bytes: a different adapter
    a.write_bytes(b"adapter a, retrained")
    monkeypatch.setenv("INTENTREC_LLM_ADAPTER", str(a))
    assert find_batch(store, ids, pin_spec(BatchSpec(now=NOW, index_cutoff=NOW)).model_dump()) is None


def test_a_batch_pins_the_small_model_prompt_sizes_and_an_older_batch_is_not_reused(tmp_path, monkeypatch):
    """The embedded model's prompt sizes are written into the batch's overrides when it is created
    (an explicit --set wins), so a batch from before a change of those defaults is not reused."""
    from agents.context import SMALL_MODEL_PROMPT
    from batch.runner import pin_spec
    from evals.tag_eval import find_batch

    for var in ("INTENTREC_LLM_CONFIG", "INTENTREC_LLM_PROFILE", "INTENTREC_LLM_BACKEND", "INTENTREC_LLM_MODEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("INTENTREC_LLM_ADAPTER", "none")
    local = pin_spec(BatchSpec(now=NOW, overrides={"tags_only": True}))
    assert local.overrides == {**SMALL_MODEL_PROMPT, "tags_only": True}
    mine = pin_spec(BatchSpec(now=NOW, overrides={"history_budget": 1500, "catalogue_size": None}))
    assert mine.overrides["history_budget"] == 1500 and mine.overrides["catalogue_size"] is None
    assert mine.overrides["tags_per_expert"] == SMALL_MODEL_PROMPT["tags_per_expert"]
    # a server whose model is not the small one keeps the template defaults; one serving it gets the sizes
    big = pin_spec(BatchSpec(now=NOW, backend="openai", model="Qwen2.5-7B", base_url="http://127.0.0.1:9/v1"))
    assert big.overrides == {}
    small = pin_spec(BatchSpec(now=NOW, backend="openai", model="HuggingFaceTB/SmolLM2-135M-Instruct",
                                  base_url="http://127.0.0.1:9/v1"))
    assert small.overrides == SMALL_MODEL_PROMPT

    store = RunLog(tmp_path / "runs.sqlite")
    ids = ["1", "2"]
    older = BatchStore(store).create(ids, spec=BatchSpec(now=NOW, overrides={"tags_only": True}, adapter="none")
                                     .model_dump())
    assert find_batch(store, ids, local.model_dump()) is None
    newer = BatchStore(store).create(ids, spec=local.model_dump())
    assert find_batch(store, ids, pin_spec(BatchSpec(now=NOW, overrides={"tags_only": True})).model_dump()) == newer
    assert older != newer


def test_a_batch_pins_its_prompt_templates_and_a_changed_template_is_neither_reused_nor_resumed(tmp_path, monkeypatch):
    """Each template's hash is pinned when the batch is created: after a template changes, the same
    users and settings make a new batch, and resuming the old one is refused, naming the template."""
    import shutil

    from batch.runner import BatchError, build_rec, pin_spec
    from evals.tag_eval import find_batch
    from prompts.registry import BUILTIN_DIR, PromptRegistry

    monkeypatch.delenv("INTENTREC_PROMPTS_DIR", raising=False)
    monkeypatch.setenv("INTENTREC_LLM_ADAPTER", "none")
    folder = tmp_path / "prompts"
    folder.mkdir()
    shutil.copy(BUILTIN_DIR / "expert.prompt", folder / "expert.prompt")
    spec = pin_spec(BatchSpec(now=NOW, prompts=str(folder)))
    assert spec.prompt_refs == {n: t.ref["sha256"] for n, t in PromptRegistry([folder]).templates.items()}
    assert set(spec.prompt_refs) >= {"expert", "planner", "arbiter"}
    store = RunLog(tmp_path / "runs.sqlite")
    bid = BatchStore(store).create(["1"], spec=spec.model_dump())
    assert find_batch(store, ["1"], pin_spec(BatchSpec(now=NOW, prompts=str(folder))).model_dump()) == bid
    text = (folder / "expert.prompt").read_text()
    (folder / "expert.prompt").write_text(text.replace("Answer with JSON only.", "Answer with JSON only, please."))
    assert find_batch(store, ["1"], pin_spec(BatchSpec(now=NOW, prompts=str(folder))).model_dump()) is None
    with pytest.raises(BatchError, match=r"\['expert'\] changed since this batch was created"):
        build_rec(spec, store)


def test_build_rec_passes_the_pinned_adapter_to_the_llm_settings(monkeypatch):
    from batch import runner
    from intentrec.service import IntentRec

    seen = {}
    monkeypatch.setattr(IntentRec, "from_settings", classmethod(
        lambda cls, dataset, llm_settings=None, **kw: seen.setdefault("llm", llm_settings)))
    monkeypatch.setenv("INTENTREC_LLM_ADAPTER", "/elsewhere/other.gguf")
    runner.build_rec(BatchSpec(now=NOW, adapter="/pinned/a.gguf", adapter_id="+abc"), store=None)
    assert seen["llm"].adapter == "/pinned/a.gguf" and seen["llm"].adapter_path() == "/pinned/a.gguf"


def test_cli_batch_takes_context_settings_and_names_a_bad_one(tmp_path, monkeypatch, capsys):
    path = tmp_path / "r.sqlite"
    code, out, err = run_cli(["batch", "--users", "1", "--now", NOW, "--factory", FACTORY, "--set", "history_budget=400",
                              "--set", "catalogue_size=none", "--runlog", str(path), "--json"], monkeypatch, capsys)
    assert code == 0, err
    bid = _json_out(out)["batch_id"]
    store = RunLog(path)
    assert BatchStore(store).get(bid)["spec"]["overrides"] == {"history_budget": 400, "catalogue_size": None}
    run = store.get_run(BatchStore(store).items(bid)[0]["run_id"])
    assert json.dumps(run).count('"history_budget": 400') >= 1  # the run was configured with it, and logged it
    for bad, why in [("history_budget=lots", "valid integer"), ("budget=4", "unknown setting 'budget'"),
                     ("tag_vocabulary=any", "'open' or 'catalogue'"), ("n_items", "expected KEY=VALUE")]:
        code, out, err = run_cli(["batch", "--users", "1", "--now", NOW, "--factory", FACTORY, "--set", bad,
                                  "--runlog", str(path)], monkeypatch, capsys)
        assert code == 2 and f"--set {bad!r}" in err and why in err, err
    code, out, err = run_cli(["batch", "--resume", bid, "--set", "n_items=2", "--runlog", str(path)], monkeypatch, capsys)
    assert code == 2 and "drop --set" in err
