"""CLI commands that used to start something the user did not ask for, or could never succeed."""

from __future__ import annotations

from tests.test_adapters import good
from tests.test_runlog_support import run_cli


def test_index_search_with_an_unbuilt_cutoff_says_so_instead_of_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("INTENTREC_DATA_DIR", str(tmp_path / "data"))
    root = good(tmp_path)
    code, out, err = run_cli(["index", "search", "-d", f"csv:{root}", "--user", "u1", "--tag", "apple sauce",
                              "--cutoff", "2017-11-05"], monkeypatch, capsys)
    assert code == 2, out + err
    assert "no index is built for these settings" in out + err and "--build" in out + err
    assert not (tmp_path / "data" / "retrieval").exists()  # nothing was trained


def test_recommend_names_a_bad_context_setting_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("INTENTREC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("INTENTREC_RUNLOG_PATH", str(tmp_path / "runs.sqlite"))
    code, out, err = run_cli(["recommend", "--user", "1", "--set", "history_budget=lots"], monkeypatch, capsys)
    assert code == 2 and "--set 'history_budget=lots'" in out + err
    code, out, err = run_cli(["recommend", "--user", "1", "--set", "budget=300"], monkeypatch, capsys)
    assert code == 2 and "unknown setting 'budget'" in out + err and "history_budget" in out + err
    assert not (tmp_path / "runs.sqlite").exists() and not (tmp_path / "data" / "retrieval").exists()


def test_recommend_with_the_scripted_backend_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("INTENTREC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("INTENTREC_RUNLOG_PATH", str(tmp_path / "runs.sqlite"))
    code, out, err = run_cli(["recommend", "--user", "1", "--backend", "scripted"], monkeypatch, capsys)
    assert code == 2 and "the scripted backend has no answers of its own" in out + err
    assert not (tmp_path / "runs.sqlite").exists()  # before the fix an error run was logged
    assert not (tmp_path / "data" / "retrieval").exists()
