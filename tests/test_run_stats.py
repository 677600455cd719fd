"""``evals.run_stats.call_stats`` on a real SQLite run log: counts, and failed calls grouped by node and
first line of their message, so a benchmark's JSON says why calls failed."""
from __future__ import annotations

from evals.run_stats import ERROR_KINDS, call_stats, error_head
from runlog.store import RunLog


def _call(store, rid, node, *, error=None, parsed=None, attempts=1):
    store.add_call(rid, node=node, subject=None, prompt=None, messages=[], raw="{}", parsed=parsed,
                   record={"attempts": attempts, "prompt_tokens": 10, "completion_tokens": 3}, error=error,
                   latency_s=0.5)


def test_call_stats_counts_and_groups_failures(tmp_path):
    store = RunLog(tmp_path / "runs.sqlite")
    rid = store.start_run(user_id="1")
    _call(store, rid, "expert", parsed={"ok": 1})
    _call(store, rid, "expert", parsed=None)  # no error, nothing parsed
    for _ in range(2):
        _call(store, rid, "planner", error="LLMTimeoutError: server http://x timed out after 60 s\ntraceback…",
              attempts=2)
    _call(store, rid, "arbiter", error="LLMConnectionError: refused")
    store.finish_run(rid, status="ok:fallback")
    s = call_stats(store, [rid])
    assert (s["calls"], s["failed_calls"], s["unparsed_calls"], s["retried_calls"]) == (5, 3, 1, 2)
    assert s["valid_share"] == 0.2 and s["run_status"] == {"ok:fallback": 1}
    assert s["errors"] == {"planner: LLMTimeoutError: server http://x timed out after 60 s": 2,
                           "arbiter: LLMConnectionError: refused": 1}
    assert list(s["errors"])[0].startswith("planner")  # most frequent first
    store.close()


def test_error_head_cuts_and_caps():
    assert error_head("a\nb") == "a"
    assert error_head("") == "(empty error)"
    long = error_head("x" * 500, width=20)
    assert len(long) == 20 and long.endswith("…")
    assert ERROR_KINDS >= 1
