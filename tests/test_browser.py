"""A logged run's ``/runs/{id}/view`` served by a real uvicorn server and rendered by headless
Chromium (Debian's ``chromium``): the rendered DOM holds every recommended title as text, the hostile
title stays text (no script element), and a screenshot of the page is a real image."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from serve.app import create_app
from serve.settings import ServeSettings
from tests.serve_support import HOSTILE, PageText, hostile_run, live_server

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)
    if not found:
        pytest.fail("chromium not found: install Debian's chromium (.ci/run does this): "
                    "apt-get install -y chromium")
    return found


def run_chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "HOME": str(profile)})
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    logged = hostile_run(tmp_path_factory.mktemp("browser") / "runs.sqlite")
    app = create_app(lambda: logged.rec, settings=ServeSettings(api_token=None, preload=False))
    with live_server(app) as live:
        yield logged, f"{live.url}/runs/{logged.run_id}/view"


def test_rendered_dom_shows_titles_as_text_and_runs_no_script(served, tmp_path):
    logged, url = served
    proc = run_chromium(["--dump-dom", url], tmp_path / "profile")
    dom = proc.stdout
    assert "<html" in dom and logged.run_id in dom, dom[:500]
    page = PageText(dom)
    recs = logged.output["recommendations"]
    assert len(recs) == 2
    for r in recs:
        assert r["title"] in page.text
    assert HOSTILE in page.text  # the hostile title is visible text
    assert "script" not in page.tags  # and no script element was created from it
    assert "alert(" not in "".join(dom.lower().split("&lt;script&gt;alert(1)&lt;/script&gt;"))
    assert len(page.rows_with("task")) == len(logged.rec.runlog.tasks(logged.run_id))


def test_screenshot(served, tmp_path):
    _, url = served
    shot = tmp_path / "report.png"
    run_chromium([f"--screenshot={shot}", "--window-size=1280,2000", url], tmp_path / "profile")
    assert shot.exists()
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, len(data)
    print(f"screenshot: {shot}")
