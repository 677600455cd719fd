"""The HTTP service (serve.app) with the scripted model, the fake retriever and the real
completejourney data: the happy path (fresh run, then the logged one), traces and views, every bad
input with its status and message, auth on and off, lazy loading, and /healthz staying responsive
while a slow run is in flight on a real uvicorn server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from core.errors import IntentRecError
from graphs.recommend import NodeError
from llm.errors import LLMConnectionError
from serve.app import create_app
from serve.settings import ServeSettings
from tests.graph_fakes import make_model
from tests.serve_support import PageText, live_server, other_user
from tests.test_runlog_support import dataset, make_app, user_id

TOKEN = "s3cret-token-for-tests"
JSON = {"content-type": "application/json"}


def settings(**kw: Any) -> ServeSettings:
    """Explicit values, so INTENTREC_SERVE_* in the environment cannot change a test."""
    return ServeSettings(**{"api_token": None, "preload": False, "max_body_bytes": 16 * 1024,
                            "max_concurrent_runs": 2, **kw})


@pytest.fixture(scope="module")
def catalogue_ids() -> set[str]:
    return set(dataset().items["item_id"].to_list())


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("serve") / "runs.sqlite")


@pytest.fixture(scope="module")
def built() -> list[int]:
    return []


@pytest.fixture(scope="module")
def client(rec, built):
    def provider():
        built.append(1)
        return rec

    with TestClient(create_app(provider, settings=settings())) as c:
        yield c


@pytest.fixture(scope="module")
def fresh(client, built):
    """One fresh run (n_items=2 asks for fewer than the default 3, so the override is visible)."""
    assert built == []  # nothing built before the first request that needs the recommender
    health = client.get("/healthz").json()
    assert health["model_loaded"] is False and health["status"] == "ok"
    r = client.post("/recommend", json={"user_id": user_id(), "context": {"now": "2017-10-01", "n_items": 2}})
    assert r.status_code == 200, r.text
    return r.json()


def test_fresh_run_returns_real_catalogue_items(fresh, rec, client, built, catalogue_ids):
    assert fresh["source"] == "fresh" and fresh["status"] == "ok" and fresh["user_id"] == user_id()
    recs = fresh["recommendations"]
    assert len(recs) == 2
    for r in recs:
        assert r["item_id"] in catalogue_ids and r["title"] and r["explanation"] and r["grade"] in ("S", "A")
        assert r["persona"] in {p["name"] for p in fresh["personas"]} and r["tag"] in {t["tag"] for t in fresh["tags"]}
        assert set(r) == {"item_id", "title", "category", "tag", "persona", "score", "grade", "explanation"}
    assert len(fresh["personas"]) == 2 and len(fresh["tags"]) == 2
    run = rec.runlog.get_run(fresh["run_id"])
    assert run["status"] == "ok" and run["user_id"] == user_id()
    assert run["request"] == {"now": "2017-10-01T00:00:00", "overrides": {"n_items": 2}}
    assert [r["item_id"] for r in rec.runlog.recommendations(fresh["run_id"])] == [r["item_id"] for r in recs]
    assert built == [1] and client.get("/healthz").json()["model_loaded"] is True


def test_fresh_false_returns_the_logged_run(fresh, client):
    r = client.post("/recommend", json={"user_id": user_id(), "fresh": False})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["source"] == "log" and got["run_id"] == fresh["run_id"] and got["status"] == "ok"
    assert got["recommendations"] == fresh["recommendations"]
    assert got["personas"] == fresh["personas"] and got["tags"] == fresh["tags"]


def test_trace_and_view(fresh, rec, client):
    rid = fresh["run_id"]
    r = client.get(f"/runs/{rid}")
    assert r.status_code == 200
    trace = r.json()
    assert trace["run"]["run_id"] == rid and trace["stats"]["tasks"] == len(rec.runlog.tasks(rid)) > 20
    assert [x["item_id"] for x in trace["recommendations"]] == [x["item_id"] for x in fresh["recommendations"]]
    assert trace["stats"]["calls"] == len(trace["calls"]) > 0
    assert {n["node"] for n in trace["tree"]} >= {"prepare", "planner", "expert", "judge_tags", "emit"}
    assert client.get(f"/runs/{rid[:8]}").json()["run"]["run_id"] == rid  # a unique prefix works
    v = client.get(f"/runs/{rid}/view")
    assert v.status_code == 200 and v.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in v.headers["content-security-policy"]
    page = PageText(v.text)
    for x in fresh["recommendations"]:
        assert x["title"] in page.text
    assert len(page.rows_with("task")) == trace["stats"]["tasks"]


def _post(client, body: Any, **kw) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/recommend", content=content, headers={**JSON, **kw.pop("headers", {})}, **kw)


@pytest.mark.parametrize("body, status, needle", [
    ({"user_id": "no-such-user"}, 404, "unknown user 'no-such-user'"),
    (b'{"user_id": "1",', 400, "malformed JSON: "),
    (b'{"user_id": 1 2}', 400, "malformed JSON: "),
    ({"user_id": "1", "context": {"temperature": 0.9}}, 422, "context.temperature: not an allowed field"),
    ({"user_id": "1", "context": {"n_items": 0}}, 422, "context.n_items: Input should be greater than or equal to 1"),
    ({"user_id": "1", "context": {"n_tags": 51}}, 422, "context.n_tags: Input should be less than or equal to 50"),
    ({"user_id": "1", "context": {"beta": 1.5}}, 422, "context.beta"),
    ({"user_id": "1", "context": {"judge_mode": "loud"}}, 422, "context.judge_mode"),
    ({"user_id": "1", "context": {"now": "2017-02-30"}}, 422, "context.now: not a calendar date: 2017-02-30"),
    ({"user_id": "1", "context": {"now": "01/10/2017"}}, 422, "context.now"),
    ({"user_id": "1", "context": {"now": "9999-12-31"}}, 422,
     "context.now: 9999-12-31 is outside the supported range 1970-01-01 to 2100-01-01"),
    ({"user_id": "x" * 65}, 422, "user_id: String should have at most 64 characters"),
    ({"user_id": ""}, 422, "user_id: String should have at least 1 character"),
    ({"fresh": True}, 422, "user_id: Field required"),
    ({"user_id": "1", "refresh": True}, 422, "refresh: not an allowed field (allowed: user_id, fresh, context)"),
    ({"user_id": "1", "fresh": False, "context": {"n_items": 3}}, 422, "context applies only to fresh=true"),
    ([1, 2], 422, "the body must be a JSON object"),
])
def test_bad_input(client, body, status, needle):
    r = _post(client, body)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert needle in detail
    assert "Traceback" not in r.text


def test_empty_history_is_422(client):
    uid = dataset().users["user_id"][0]
    r = _post(client, {"user_id": uid, "context": {"now": "2000-01-01"}})
    assert r.status_code == 422 and r.json()["detail"].startswith(f"user '{uid}' has an empty behaviour history")


def test_fresh_false_with_nothing_logged_is_404(client):
    uid = other_user()
    r = _post(client, {"user_id": uid, "fresh": False})
    assert r.status_code == 404
    assert r.json()["detail"] == f"no logged result for user {uid}; POST with fresh=true"


def test_body_without_json_content_type(client):
    r = client.post("/recommend", content=b'{"user_id": "1"}')  # no Content-Type: not parsed as JSON
    assert r.status_code == 422 and "Content-Type: application/json" in r.json()["detail"]


def test_oversized_bodies_are_413(client):
    big = json.dumps({"user_id": "1", "pad": "x" * 20_000}).encode()
    r = client.post("/recommend", content=big, headers=JSON)
    assert r.status_code == 413 and r.json()["detail"] == (
        f"request body too large: {len(big)} bytes; the limit is 16384 bytes")

    def chunks():  # no Content-Length: Transfer-Encoding chunked
        for _ in range(20):
            yield b"x" * 1024

    r = client.post("/recommend", content=chunks(), headers=JSON)
    assert r.status_code == 413 and "more than 16384 bytes received" in r.json()["detail"]
    r = client.post("/recommend", content=b"{}", headers={**JSON, "content-length": "abc"})
    assert r.status_code == 400 and "invalid Content-Length" in r.json()["detail"]
    # just under the limit passes the guard (and fails validation, as it should)
    ok = json.dumps({"user_id": "1", "pad": "x" * (16 * 1024 - 40)}).encode()
    assert len(ok) <= 16 * 1024
    r = client.post("/recommend", content=ok, headers=JSON)
    assert r.status_code == 422 and "pad: not an allowed field" in r.json()["detail"]


def test_unknown_run_is_404(client, rec):
    r = client.get("/runs/0123456789abcdef")
    assert r.status_code == 404 and r.json() == {"detail": "unknown run id '0123456789abcdef'"}
    assert str(rec.runlog.path) not in r.text  # the server's file layout is not leaked
    assert client.get("/runs/0123456789abcdef/view").status_code == 404


def test_openapi_lists_every_body(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert {"RecommendRequest", "ContextOverrides", "RecommendResponse", "Recommendation", "TraceResponse",
            "HealthResponse", "ErrorResponse"} <= set(schemas)
    assert schemas["ContextOverrides"]["additionalProperties"] is False
    assert set(spec["paths"]) == {"/recommend", "/runs/{run_id}", "/runs/{run_id}/view", "/healthz"}
    post = spec["paths"]["/recommend"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/RecommendRequest")
    assert {"400", "404", "413", "422", "429"} <= set(post["responses"])


# ----- auth -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def auth_client(rec):
    with TestClient(create_app(lambda: rec, settings=settings(api_token=TOKEN))) as c:
        yield c


def test_auth_on(auth_client, fresh):
    rid = fresh["run_id"]
    h = auth_client.get("/healthz")
    assert h.status_code == 200 and h.json()["auth"] is True
    for path in (f"/runs/{rid}", f"/runs/{rid}/view", "/openapi.json", "/docs", "/no-such-path"):
        r = auth_client.get(path)
        assert r.status_code == 401, path
        assert r.json()["detail"] == "missing API token: send the header 'Authorization: Bearer <token>'"
        assert r.headers["www-authenticate"].startswith("Bearer")
    r = auth_client.get(f"/runs/{rid}", headers={"Authorization": "Bearer wrong-token"})
    assert r.status_code == 401 and r.json()["detail"] == "invalid API token"
    r = auth_client.get(f"/runs/{rid}", headers={"Authorization": f"Basic {TOKEN}"})
    assert r.status_code == 401 and "expected 'Bearer <token>'" in r.json()["detail"]
    # 401 comes before the body is looked at
    r = auth_client.post("/recommend", content=b"{not json", headers=JSON)
    assert r.status_code == 401
    ok = {"Authorization": f"Bearer {TOKEN}"}
    assert auth_client.get(f"/runs/{rid}", headers=ok).status_code == 200
    assert auth_client.get(f"/runs/{rid}/view", headers=ok).status_code == 200
    r = auth_client.post("/recommend", json={"user_id": user_id(), "fresh": False}, headers=ok)
    assert r.status_code == 200 and r.json()["run_id"] == rid
    spec = auth_client.get("/openapi.json", headers=ok).json()
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_auth_off(client, fresh):
    assert client.get("/healthz").json()["auth"] is False
    assert client.get(f"/runs/{fresh['run_id']}").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_empty_token_is_refused():
    with pytest.raises(ValueError, match="api_token is empty"):
        ServeSettings(api_token="  ")


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("INTENTREC_SERVE_PORT", "9123")
    monkeypatch.setenv("INTENTREC_SERVE_MAX_CONCURRENT_RUNS", "5")
    monkeypatch.setenv("INTENTREC_SERVE_API_TOKEN", "abc")
    s = ServeSettings()
    assert (s.host, s.port, s.max_concurrent_runs, s.max_body_bytes, s.token()) == ("127.0.0.1", 9123, 5, 16384, "abc")
    assert "abc" not in repr(s)
    assert ServeSettings(port=1).port == 1  # explicit wins over the environment


# ----- errors that are the server's -------------------------------------------------------------

class Failing:
    runlog = None

    def __init__(self, exc: BaseException):
        self.exc = exc

    def recommend(self, *a: Any, **k: Any) -> Any:
        raise self.exc


@pytest.mark.parametrize("exc, status, needle", [
    (IntentRecError("the prompt folder has no planner.prompt"), 400, "the prompt folder has no planner.prompt"),
    (LLMConnectionError("cannot reach http://127.0.0.1:9/v1"), 502, "cannot reach http://127.0.0.1:9/v1"),
    (NodeError("retrieve", RuntimeError("index exploded")), 500, "node 'retrieve' failed: RuntimeError: index exploded"),
    (RuntimeError("secret internals"), 500, "the run failed (RuntimeError)"),
])
def test_server_side_failures(exc, status, needle):
    with TestClient(create_app(lambda: Failing(exc), settings=settings())) as c:
        r = c.post("/recommend", json={"user_id": "1"})
    assert r.status_code == status and needle in r.json()["detail"]
    assert "Traceback" not in r.text
    if isinstance(exc, RuntimeError):
        assert "secret internals" not in r.text


def test_a_failed_load_is_503_and_retried():
    attempts: list[int] = []

    def provider():
        attempts.append(1)
        if len(attempts) == 1:
            raise FileNotFoundError("no index under /data")
        return Failing(IntentRecError("loaded now"))

    with TestClient(create_app(provider, settings=settings())) as c:
        r = c.post("/recommend", json={"user_id": "1"})
        assert r.status_code == 503 and "could not be loaded: FileNotFoundError" in r.json()["detail"]
        h = c.get("/healthz").json()
        assert h["model_loaded"] is False and "FileNotFoundError" in h["load_error"]
        r = c.post("/recommend", json={"user_id": "1"})
        assert r.status_code == 400 and r.json()["detail"] == "loaded now"
        assert c.get("/healthz").json()["model_loaded"] is True and len(attempts) == 2


def test_preload_builds_in_the_background():
    gate = threading.Event()

    def provider():
        gate.wait(10)
        return Failing(IntentRecError("x"))

    with TestClient(create_app(provider, settings=settings(preload=True))) as c:
        h = c.get("/healthz").json()  # answers while the build is blocked
        assert h["model_loaded"] is False and h["loading"] is True
        gate.set()
        deadline = time.monotonic() + 10
        while not c.get("/healthz").json()["model_loaded"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)


# ----- a real server: /healthz and limits while a slow run is in flight ----------------------------

def test_healthz_answers_while_a_slow_run_is_in_flight(tmp_path, catalogue_ids):
    slow = make_app(tmp_path / "runs.sqlite", model=make_model(k=2, latency_s=0.35))
    app = create_app(lambda: slow, settings=settings(max_concurrent_runs=1, preload=True))
    result: dict[str, Any] = {}

    with live_server(app) as live, httpx.Client(base_url=live.url, timeout=60) as http:
        def slow_call() -> None:
            t0 = time.monotonic()
            with httpx.Client(base_url=live.url, timeout=60) as own:
                result["response"] = own.post("/recommend", json={"user_id": user_id(), "context": {"n_items": 2}})
            result["wall_s"] = time.monotonic() - t0

        worker = threading.Thread(target=slow_call)
        worker.start()
        deadline = time.monotonic() + 15
        while http.get("/healthz").json()["runs_in_flight"] != 1:
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.02)
        time.sleep(0.3)  # well inside the run (planner call at least)
        t0 = time.monotonic()
        h = http.get("/healthz", timeout=2)
        health_s = time.monotonic() - t0
        assert h.status_code == 200 and health_s < 2
        assert h.json() == {**h.json(), "status": "ok", "model_loaded": True, "runs_in_flight": 1}
        assert worker.is_alive() and "response" not in result  # the run is still going
        # one run is the limit here: a second gets 429 at once
        busy = http.post("/recommend", json={"user_id": user_id()})
        assert busy.status_code == 429 and busy.headers["retry-after"] == "5"
        assert "1 run(s) already in flight (max_concurrent_runs=1)" in busy.json()["detail"]
        # a chunked body over the limit is cut on a real server too
        big = http.post("/recommend", content=(b"x" * 1024 for _ in range(24)), headers=JSON)
        assert big.status_code == 413 and "more than 16384 bytes received" in big.json()["detail"]
        big = http.post("/recommend", content=b"x" * 200_000, headers=JSON)  # with a Content-Length
        assert big.status_code == 413 and big.json()["detail"].startswith("request body too large: 200000 bytes")
        assert worker.is_alive()
        worker.join(60)
        assert not worker.is_alive()
        r = result["response"]
        assert r.status_code == 200, r.text
        assert result["wall_s"] > health_s + 1
        assert len(r.json()["recommendations"]) == 2
        assert all(x["item_id"] in catalogue_ids for x in r.json()["recommendations"])
        assert http.get("/healthz").json()["runs_in_flight"] == 0
    assert not live.errors


# ----- the command ------------------------------------------------------------------------------

def test_serve_command_starts_a_working_server(tmp_path):
    """``serve_cmd`` under typer in a subprocess: options reach the settings, the recommender is
    built lazily (``--no-preload``) by the factory, auth is on with ``--token``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("import typer; from serve.cli import serve_cmd; app = typer.Typer(); "
            "app.command('serve')(serve_cmd); app.command('other')(lambda: None); app()")
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTENTREC_SERVE_")}
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", "--port", str(port), "--no-preload",
                             "--factory", "tests.test_runlog_support:factory", "--runlog", str(tmp_path / "r.sqlite"),
                             "--token", TOKEN], cwd=root, env={**env, "PYTHONPATH": str(root)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                h = httpx.get(f"{url}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server never answered"
                time.sleep(0.1)
        assert h.json()["model_loaded"] is False and h.json()["auth"] is True and h.json()["runlog"] is True
        assert httpx.get(f"{url}/runs/abcd", timeout=10).status_code == 401
        r = httpx.post(f"{url}/recommend", json={"user_id": user_id(), "fresh": False},
                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        assert r.status_code == 404 and r.json()["detail"].startswith(f"no logged result for user {user_id()}")
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"serving on http://127.0.0.1:{port}" in out and "auth on" in out
