"""The HTML report (report.html) on real logged scripted runs over the completejourney catalogue:
content per run, escaping of hostile data, the timeline, highlighting, the multi-run report."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from report.html import environment, fmt_secs, render_report, render_run_page, write_report
from tests.serve_support import HOSTILE, PageText, hostile_run, other_user

TEMPLATES = Path(__file__).resolve().parent.parent / "report" / "templates"


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    return hostile_run(tmp_path_factory.mktemp("report") / "runs.sqlite")


@pytest.fixture(scope="module")
def page(logged):
    return render_run_page(logged.rec.runlog, logged.run_id)


def test_run_page_shows_every_title_persona_and_tag(logged, page):
    out = logged.output
    recs = out["recommendations"]
    assert [r["item_id"] for r in recs] == [logged.items[0]["item_id"], logged.items[3]["item_id"]]
    p = PageText(page)
    text = p.text
    for r in recs:
        assert r["title"] in text and r["item_id"] in text and r["explanation"] in text
        assert r["category"] in text and r["tag"] in text and r["persona"] in text
    assert len(out["personas"]) == 2 and len(out["tags"]) == 2
    for persona in out["personas"]:
        assert persona["name"] in text and persona["focus"] in text
    for t in out["tags"]:
        assert t["tag"] in text and t["intent"] in text
    assert logged.run_id in text and str(out["user_id"]) in text
    rec_rows = p.rows_with("rec")
    assert len(rec_rows) == 2
    assert "1.000" in rec_rows[0]["text"] and "S" in rec_rows[0]["text"].split()  # score and judge grade
    run = logged.rec.runlog.get_run(logged.run_id)
    assert run["wall_s"] > 0 and fmt_secs(run["wall_s"]) in text and "2017-10-01" in text


def test_hostile_title_is_escaped_text_not_markup(page):
    p = PageText(page)
    assert HOSTILE in p.text  # visible as text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "script" not in p.tags
    assert "<script" not in page.lower()
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    # self-contained: no external reference of any kind
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "@import" not in page and "url(" not in page


def test_timeline_has_one_row_per_task_with_offsets(logged, page):
    store = logged.rec.runlog
    tasks = store.tasks(logged.run_id)
    rows = PageText(page).rows_with("task")
    assert len(rows) == len(tasks) > 20
    # subgraph nodes are there too, in the order the tasks started
    assert [r["text"].split()[0] for r in rows] == [t["node"] for t in tasks]
    assert {"joint_evaluator", "senior_reviewer", "rule_evaluators"} <= {t["node"] for t in tasks}
    bars = re.findall(r'class="bar[^"]*" style="left: ([0-9.]+)%; width: ([0-9.]+)%"', page)
    assert len(bars) == len(tasks)
    for left, width in bars:
        assert float(left) >= 0 and float(width) > 0 and float(left) + float(width) <= 100.001
    # the first task (prepare) starts first; planner starts after prepare ends
    assert float(bars[1][0]) >= float(bars[0][0]) + float(bars[0][1]) - 0.01


def test_b_grades_and_failed_calls_are_highlighted(logged, page):
    p = PageText(page)
    b_rows = [r for r in p.rows_with("flag-b") if "expl:" + logged.b_item["item_id"] in r["text"]]
    assert len(b_rows) == 1 and "defect" in b_rows[0]["text"]
    failed = [c for c in logged.rec.runlog.calls(logged.run_id) if c["error"]]
    assert len(failed) == 1 and failed[0]["subject"] == logged.failed_item["item_id"]
    err_calls = [r for r in p.rows_with("flag-err") if r["text"].strip().startswith(str(failed[0]["call_id"]))]
    assert len(err_calls) == 1 and "gave no valid Explanation" in err_calls[0]["text"]
    # the timeline row of the explain task that made the failed call is flagged too
    assert any(r["text"].startswith("explain") and logged.failed_item["item_id"] in r["text"]
               for r in p.rows_with("task") if "flag-err" in r["class"])
    # both dropped items are listed with their reason
    assert "graded_B_after_regen" in p.text and "llm_invalid" in p.text


def test_verdicts_per_dimension(logged, page):
    store = logged.rec.runlog
    js = store.judgements(store.graph_set(logged.run_id)["set_id"])
    p = PageText(page)
    for j in js:
        dims = [d["dimension"] for d in j["verdict"]["dimensions"]]
        row = next(r for r in p.rows_with("verdict") if j["subject_id"] in r["text"]
                   and r["text"].split()[0] == str(j["pass_no"]))
        outcomes = [d["outcome"] for d in j["verdict"]["dimensions"]]
        assert row["text"].split().count("defect") == outcomes.count("defect")
        assert j["grade"] in row["text"].split()
        for d in dims:
            assert d in p.text


def test_personas_and_tags_from_tasks_when_the_run_has_no_output(logged, monkeypatch):
    """An ``incomplete`` run has no output summary: personas and tags come from the task results."""
    store = logged.rec.runlog
    real = store.get_run

    def without_output(run_id):
        run = real(run_id)
        return {**run, "output": None, "status": "incomplete"}

    monkeypatch.setattr(store, "get_run", without_output)
    text = PageText(render_run_page(store, logged.run_id)).text
    for persona in logged.output["personas"]:
        assert persona["name"] in text
    for t in logged.output["tags"]:
        assert t["tag"] in text
    assert "incomplete" in text


def test_report_for_several_users_with_extra(logged, tmp_path):
    store = logged.rec.runlog
    second = logged.rec.recommend(other_user(), now="2017-10-01")
    extra = {"meta": {"dataset": "completejourney", "backend": "scripted <b>bold</b>"},
             "users": {str(logged.output["user_id"]): {"history": {"events": 2730, "top_categories": [HOSTILE, "Soft Drinks"]},
                                                       "future": {"window_days": 28, "item_hits": 1, "items": {
                                                           logged.items[0]["item_id"]: {"bought_item": True}}}},
                       "no-run-user": {"history": {"events": 5}}}}
    html = render_report(store, [logged.run_id, second["run_id"]], title="Demo <i>3 users</i>", extra=extra)
    p = PageText(html)
    assert "script" not in p.tags
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "<b>bold" not in html
    assert "&lt;i&gt;3 users&lt;/i&gt;" in html and "<i>3 users" not in html
    assert "Demo <i>3 users</i>" in p.text and "scripted <b>bold</b>" in p.text
    for out in (logged.output, second):
        assert out["run_id"] in p.text
        for r in out["recommendations"]:
            assert r["title"] in p.text
        for persona in out["personas"]:
            assert persona["name"] in p.text
    assert p.text.count(HOSTILE) >= 2  # the title and the history brief, both as text
    assert "2,730" in p.text and "bought in next 28 d" in p.text and "item bought" in p.text
    assert "no-run-user" in p.text and "no logged run" in p.text
    summary = p.rows_with("summary-row")
    assert [r["text"].split()[1] for r in summary] == [logged.run_id, second["run_id"]]
    assert len(p.rows_with("task")) == len(store.tasks(logged.run_id)) + len(store.tasks(second["run_id"]))
    path = write_report(tmp_path / "sub" / "report.html", html)
    assert path == tmp_path / "sub" / "report.html" and path.read_text(encoding="utf-8") == html
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_templates_autoescape_and_never_mark_data_safe():
    env = environment()
    names = sorted(p.name for p in TEMPLATES.iterdir())
    assert {"base.html.j2", "_run.html.j2", "run.html.j2", "report.html.j2"} <= set(names)
    for name in names:
        assert env.autoescape(name) is True
        source = (TEMPLATES / name).read_text()
        assert "|safe" not in source.replace(" ", "") and "Markup(" not in source
        assert "<script" not in source.lower()
    rendered = env.from_string("{{ x }}").render(x=HOSTILE)
    assert rendered == "&lt;script&gt;alert(1)&lt;/script&gt;"


def test_unknown_run_is_a_clear_error(logged):
    from runlog.store import RunNotFoundError

    with pytest.raises(RunNotFoundError, match="unknown run id 'nope-nope'"):
        render_run_page(logged.rec.runlog, "nope-nope")
