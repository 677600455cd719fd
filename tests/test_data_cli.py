"""``app.py data stats``, ``data compress`` and ``bench compression``: JSON figures, people's tables, and
clean one-line errors (exit status 2, no traceback) through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import behavior.adapters as adapters
from app import app
from core.errors import DataError, UnknownUserError

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


@pytest.fixture()
def reuse_cj(cj, monkeypatch):
    """Serve completejourney from the shared fixture instead of loading it again."""
    real = adapters.load_dataset

    def load(spec=None, policies=None):
        if (spec or "completejourney") == "completejourney" and policies == adapters.LoadPolicies():
            return cj
        return real(spec, policies)

    monkeypatch.setattr(adapters, "load_dataset", load)


def run_json(*args: str) -> dict:
    res = runner.invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_stats_completejourney_json(reuse_cj):
    s = run_json("data", "stats", "--json")
    assert (s["dataset"], s["users"], s["behaviors"]) == ("completejourney", 2469, 1_464_471)
    assert s["behavior_counts"] == {"purchase": 1_464_471}
    assert s["history_length"]["p50"] == 406 and s["history_length"]["max"] == 4192
    assert s["time_range"]["first"].startswith("2017-01-01")
    assert s["load_report"]["rows_read"] == 1_469_307
    assert s["load_report"]["dropped"] == {"item_not_in_catalogue": 4836}
    assert s["reference_tags"] is None


def test_stats_taobao_and_movielens_json():
    t = run_json("data", "stats", "--dataset", "taobao", "--json")
    assert t["users"] == 815
    assert t["behavior_counts"] == {"view": 75872, "cart": 4497, "favorite": 2356, "purchase": 1750}
    assert t["load_report"]["dropped"] == {"truncated_last_line": 1}
    m = run_json("data", "stats", "-d", "movielens", "--json")
    assert (m["users"], m["items"], m["behaviors"]) == (610, 9742, 100836)
    assert m["reference_tags"] == {"tags": 3683, "users": 58, "items": 1572, "distinct_tags": 1475}


def test_stats_table_for_people():
    res = runner.invoke(app, ["data", "stats", "-d", "taobao"])
    assert res.exit_code == 0
    for text in ("815", "75,872", "truncated_last_line", "mapped types", "pv ->", "history length"):
        assert text in res.stdout


def test_stats_reports_rows_dropped_by_policy(tmp_path):
    (tmp_path / "items.csv").write_text("item_id,title\nA,Apple\n")
    (tmp_path / "behaviors.csv").write_text("user_id,item_id,behavior,timestamp\nu,A,buy,2017-01-01\n"
                                            "u,Z,buy,2017-01-02\nu,A,share,2017-01-03\n")
    s = run_json("data", "stats", "-d", f"csv:{tmp_path}", "--json")
    assert s["behaviors"] == 1
    assert s["load_report"]["dropped"] == {"unknown_behavior_type": 1, "item_not_in_catalogue": 1}
    p = run_json("data", "stats", "-d", f"csv:{tmp_path}", "--json", "--missing-item", "placeholder",
                 "--unknown-type", "drop")
    assert p["behaviors"] == 2 and p["load_report"]["dropped"] == {"unknown_behavior_type": 1}  # buy is an alias
    res = runner.invoke(app, ["data", "stats", "-d", f"csv:{tmp_path}", "--missing-item", "fail"])
    assert isinstance(res.exception, DataError) and res.exception.row == 3


def test_compress_json(reuse_cj):
    out = run_json("data", "compress", "--user", "1000", "--budget", "2000", "--json")
    st = out["stats"]
    assert out["tokenizer"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert st["raw_tokens"] > st["compressed_full_tokens"] > st["compressed_tokens"]
    assert st["compressed_tokens"] <= 2000 and st["budget"] == 2000
    assert out["text"].startswith("omitted(events: ")
    assert out["summary"]["behavior_counts"] == {"purchase": 1219}
    assert out["now"] == "2018-01-01T04:01:20"


def test_compress_now_and_table(reuse_cj):
    out = run_json("data", "compress", "-u", "1000", "--now", "2017-10-01", "--json")
    assert out["summary"]["last_date"] < "2017-10-01" and out["now"] == "2017-10-01T00:00:00"
    res = runner.invoke(app, ["data", "compress", "-u", "1000", "--budget", "500"])
    assert res.exit_code == 0
    for text in ("raw (one line per event)", "final block", "recent purchases", "omitted(events"):
        assert text in res.stdout


def test_compress_unknown_user_raises_typed_error(reuse_cj):
    res = runner.invoke(app, ["data", "compress", "-u", "nobody", "--json"])
    assert isinstance(res.exception, UnknownUserError)


def test_bench_compression_json():
    res = run_json("bench", "compression", "-d", "taobao", "--users", "12", "--budget", "1000", "--json")
    assert res["users_measured"] == 12 and res["budget"] == 1000
    assert 0 < res["budget_drops"]["users_over_budget"] < 12  # some users fit, some do not
    assert res["items_retained"]["within_budget_users"] == 1.0
    assert res["items_retained"]["all_users"] < 1.0
    assert res["budget_drops"]["any_final_over_budget"] is False
    assert res["final_tokens"]["max"] <= 1000
    assert 0 < res["reduction_median"]["overall"] < 1
    assert set(res["within_budget_at"]) == {"1000", "8192", "131072"}
    assert res["within_budget_at"]["1000"]["after"] >= res["within_budget_at"]["1000"]["before"]
    assert res["seconds_per_user"]["mean"] > 0


def _app(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_bad_input_is_one_line_not_a_traceback(tmp_path):
    (tmp_path / "items.csv").write_text("item_id,title\nA,Apple\n")
    (tmp_path / "behaviors.csv").write_text("user_id,item_id,behavior,timestamp\nu,A,buy,2017-01-01\n"
                                            "u,A,buy,last tuesday\n")
    p = _app("data", "stats", "--dataset", f"csv:{tmp_path}")
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert f"{tmp_path / 'behaviors.csv'}:row 3: unparseable timestamp 'last tuesday'" in " ".join(p.stderr.split())
    assert p.stdout == ""
    p = _app("data", "compress", "--dataset", "taobao", "--user", "nobody", "--json")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "unknown user 'nobody' in dataset 'taobao'" in p.stderr
