"""`app.py prompts list | show NAME | diff DIR`, and broken templates reported through the CLI with
the file and the line (a syntax error, an undeclared variable)."""

from __future__ import annotations

import json

import pytest

from prompts.registry import PromptRegistry
from tests.test_runlog_support import run_cli

MARKER = "Mention the weather in Ohio."


@pytest.fixture()
def override(tmp_path):
    """An override folder: explainer changed by one sentence, arbiter identical, one new template."""
    reg = PromptRegistry()
    src = reg.get("explainer").path.read_text(encoding="utf-8")
    (tmp_path / "explainer.prompt").write_text(src.replace("<<<system>>>\n", f"<<<system>>>\n{MARKER}\n", 1))
    (tmp_path / "arbiter.prompt").write_text(reg.get("arbiter").path.read_text(encoding="utf-8"))
    (tmp_path / "greeting.prompt").write_text(
        "---\nname: greeting\nversion: 1\nvariables: [who]\n---\n<<<system>>>\nBe kind.\n<<<user>>>\nHello {{ who | data }}\n")
    return tmp_path


def test_list_json_shows_origin_and_hashes(override, monkeypatch, capsys):
    code, out, _ = run_cli(["prompts", "list", "--json"], monkeypatch, capsys)
    base = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and {"planner", "expert", "arbiter", "explainer", "judge_joint"} <= set(base)
    code, out, _ = run_cli(["prompts", "list", "--json", "--prompts", str(override)], monkeypatch, capsys)
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["explainer"]["origin"] == str(override) and rows["planner"]["origin"] == base["planner"]["origin"]
    assert rows["explainer"]["sha256"] != base["explainer"]["sha256"]
    assert rows["arbiter"]["sha256"] == base["arbiter"]["sha256"]
    assert rows["greeting"]["variables"] == ["who"] and "greeting" not in base
    code, out, _ = run_cli(["prompts", "list"], monkeypatch, capsys)
    assert code == 0 and "Prompt templates" in out and "explainer_style" in out


def test_show_prints_the_template_in_force(override, monkeypatch, capsys):
    code, out, _ = run_cli(["prompts", "show", "explainer", "--prompts", str(override)], monkeypatch, capsys)
    assert code == 0 and MARKER in out and str(override) in out
    code, out, _ = run_cli(["prompts", "show", "explainer"], monkeypatch, capsys)
    assert code == 0 and MARKER not in out and "<<<system>>>" in out
    code, _, err = run_cli(["prompts", "show", "ranker"], monkeypatch, capsys)
    assert code == 2 and "no prompt template named 'ranker'" in err


def test_diff_reports_added_replaced_unchanged(override, monkeypatch, capsys):
    code, out, _ = run_cli(["prompts", "diff", str(override), "--json"], monkeypatch, capsys)
    rep = json.loads(out)
    assert code == 0 and rep["added"] == ["greeting"] and rep["unchanged"] == ["arbiter"]
    assert list(rep["replaced"]) == ["explainer"]
    added = [ln for ln in rep["replaced"]["explainer"].splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    assert added == [f"+{MARKER}"]
    code, out, _ = run_cli(["prompts", "diff", str(override)], monkeypatch, capsys)
    assert code == 0 and "replaced explainer" in out and "greeting" in out


def _broken(tmp_path, body: str, variables: str = "[guideline]"):
    f = tmp_path / "explainer.prompt"
    f.write_text(f"---\nname: explainer\nversion: 9\nvariables: {variables}\n---\n{body}")
    return f


def test_syntax_error_names_file_and_line(tmp_path, monkeypatch, capsys):
    # front matter is lines 1-5; the body starts on line 6, the broken tag is on line 8
    f = _broken(tmp_path, "<<<system>>>\nYou write.\n{% if guideline %}{{ guideline }\n<<<user>>>\nGo.\n")
    code, _, err = run_cli(["prompts", "list", "--prompts", str(tmp_path)], monkeypatch, capsys)
    assert code == 2 and f"{f}:8: template syntax error" in err and "Traceback" not in err


def test_undeclared_variable_names_file_and_line(tmp_path, monkeypatch, capsys):
    f = _broken(tmp_path, "<<<system>>>\nYou write.\n<<<user>>>\n{{ guideline }}\nAlso {{ secret_sauce }}\n")
    code, _, err = run_cli(["prompts", "show", "explainer", "--prompts", str(tmp_path)], monkeypatch, capsys)
    assert code == 2 and f"{f}:10: uses undeclared variable 'secret_sauce'" in err
    f = _broken(tmp_path, "<<<system>>>\nYou write.\n<<<user>>>\n{{ guideline }}\n", "[guideline, tone]")
    code, _, err = run_cli(["prompts", "diff", str(tmp_path)], monkeypatch, capsys)
    assert code == 2 and f"{f}: declares variables it never uses: ['tone']" in err


def test_missing_override_folder(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["prompts", "list", "--prompts", str(tmp_path / "nope")], monkeypatch, capsys)
    assert code == 2 and "prompt override folder does not exist" in err
