"""Faults and request shapes of the ``openai`` backend, against loopback stand-ins (127.0.0.1 only).

Each fault must be a typed, clear error (model, attempts, raw text) and none may hang: every test
is bounded by short timeouts and asserts the elapsed time.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel
from typer.testing import CliRunner

from llm.check import _ConnectCounter
from llm.errors import (
    ContextLengthError,
    LLMAuthError,
    LLMConnectionError,
    LLMServerError,
    LLMTimeoutError,
    ModelNotFoundError,
    SchemaNotSupportedError,
    StructuredOutputError,
)
from llm.factory import make_chat_model
from llm.openai_compat import DEFAULT_CONCURRENCY, VLLM_CONCURRENCY, detected_methods, forget_detected_methods
from llm.settings import LLMSettings
from llm.structured import astructured_call, structured_call
from llm.vllm_server import WHITESPACE_FLAG
from tests.llm_fakes import RecordingServer, SilentServer, chat_completion, closed_port, model_list


class Need(BaseModel):
    need: str
    category: str


GOOD = json.dumps({"need": "baby wipes", "category": "baby"})
MSGS = [SystemMessage("shared context"), HumanMessage("what is needed?")]

OPENAI_404 = {"error": {"message": "The model `gpt-nope` does not exist or you do not have access to it.",
                        "type": "invalid_request_error", "param": None, "code": "model_not_found"}}
VLLM_404 = {"object": "error", "message": "The model `gpt-nope` does not exist.", "type": "NotFoundError",
            "param": None, "code": 404}


@pytest.fixture(autouse=True)
def fresh_detection():
    forget_detected_methods()
    yield
    forget_detected_methods()


def cfg(base: str, **kw) -> LLMSettings:
    return LLMSettings(**{"backend": "openai", "base_url": base, "model": "fake-model", "timeout_s": 2,
                          "max_retries": 1, "max_tokens": 50, **kw})


# ----- faults ---------------------------------------------------------------------------------------

def test_connection_refused():
    base = f"http://127.0.0.1:{closed_port()}/v1"
    model = make_chat_model(cfg(base, structured_method="json_schema"))
    t0 = time.monotonic()
    with pytest.raises(LLMConnectionError) as ei:
        structured_call(model, Need, MSGS)
    assert time.monotonic() - t0 < 10
    e = ei.value
    assert not isinstance(e, LLMTimeoutError)
    assert e.model == "fake-model" and e.attempts == 2 and e.base_url == base
    assert "cannot connect" in str(e) and base in str(e)


def test_connection_refused_during_detection_and_discovery():
    base = f"http://127.0.0.1:{closed_port()}/v1"
    with pytest.raises(LLMConnectionError, match="cannot connect"):
        structured_call(make_chat_model(cfg(base, max_retries=0)), Need, MSGS)  # auto: the probe
    with pytest.raises(LLMConnectionError, match="look up the served model"):
        make_chat_model(cfg(base, model=None, max_retries=0))


def test_server_that_never_answers_times_out():
    with SilentServer() as srv:
        model = make_chat_model(cfg(srv.base_url, structured_method="function_calling", timeout_s=0.5))
        t0 = time.monotonic()
        with pytest.raises(LLMTimeoutError) as ei:
            structured_call(model, Need, MSGS)
        elapsed = time.monotonic() - t0
        assert elapsed < 8
        assert srv.accepted >= 2  # the retry really went out again
    e = ei.value
    assert e.attempts == 2 and e.model == "fake-model"
    assert "within 0.5s" in str(e)


def test_server_that_never_answers_times_out_async():
    with SilentServer() as srv:
        model = make_chat_model(cfg(srv.base_url, structured_method="json_mode", timeout_s=0.5, max_retries=0))
        t0 = time.monotonic()
        with pytest.raises(LLMTimeoutError):
            asyncio.run(astructured_call(model, Need, MSGS))
        assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("body", [OPENAI_404, VLLM_404], ids=["openai-body", "vllm-body"])
def test_wrong_model_name(body):
    def respond(path, req):
        if path.endswith("/models"):
            return 200, model_list("Qwen/Qwen2.5-0.5B-Instruct")
        return 404, body

    with RecordingServer(respond) as srv:
        model = make_chat_model(cfg(srv.base_url, model="gpt-nope", structured_method="json_schema"))
        with pytest.raises(ModelNotFoundError) as ei:
            structured_call(model, Need, MSGS)
        # auto detection meets the 404 in its probe and says the same thing
        with pytest.raises(ModelNotFoundError):
            structured_call(make_chat_model(cfg(srv.base_url, model="gpt-nope")), Need, MSGS)
    e = ei.value
    assert e.model == "gpt-nope" and e.attempts == 1
    assert e.available == ["Qwen/Qwen2.5-0.5B-Instruct"]
    assert "gpt-nope" in str(e) and "Qwen/Qwen2.5-0.5B-Instruct" in str(e) and "does not exist" in e.raw[0]


def test_invalid_then_truncated_output_from_a_server():
    answers = [chat_completion("I think the user wants baby wipes"),
               chat_completion('{"need": "baby wi', finish_reason="length")]

    def respond(path, req):
        if path.endswith("/models"):
            return 200, model_list("fake-model")
        return 200, answers.pop(0) if answers else chat_completion("{}")

    with RecordingServer(respond) as srv:
        model = make_chat_model(cfg(srv.base_url, structured_method="json_schema"))
        with pytest.raises(StructuredOutputError) as ei:
            structured_call(model, Need, MSGS, max_attempts=2)
        bodies = srv.chat_bodies()
    e = ei.value
    assert e.attempts == 2 and e.model == "fake-model"
    assert e.raw == ["I think the user wants baby wipes", '{"need": "baby wi']
    assert "not valid JSON" in e.errors[0] and "cut off at max_tokens" in e.errors[1]
    assert "not valid" in bodies[1]["messages"][-1]["content"]  # the error was fed back


def test_vllm_rejecting_a_schema_is_schema_not_supported():
    vllm_400 = {"object": "error", "type": "BadRequestError", "param": None, "code": 400,
                "message": "The provided JSON schema contains features not supported by xgrammar."}
    with RecordingServer(lambda p, r: (400, vllm_400)) as srv:
        model = make_chat_model(cfg(srv.base_url, vllm=True))
        with pytest.raises(SchemaNotSupportedError) as ei:
            structured_call(model, Need, MSGS)
    e = ei.value
    assert e.method == "vllm" and e.schema == "Need" and e.attempts == 1
    assert "xgrammar" in str(e) and "xgrammar" in e.raw[0]


def test_server_refusing_every_structured_method():
    with RecordingServer(lambda p, r: (400, {"error": {"message": "response_format and tools are not supported",
                                                        "type": "invalid_request_error"}})) as srv:
        with pytest.raises(SchemaNotSupportedError) as ei:
            structured_call(make_chat_model(cfg(srv.base_url)), Need, MSGS)
        assert len(srv.chat_bodies()) == 3  # one probe per method, no retries of a 400
    assert "json_schema" in str(ei.value) and "function_calling" in str(ei.value) and "json_mode" in str(ei.value)


def test_auth_context_and_other_server_errors_are_typed():
    replies = {"auth": (401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}),
               "ctx": (400, {"error": {"message": "This model's maximum context length is 2048 tokens. However, "
                                                  "you requested 4000 tokens.", "code": "context_length_exceeded"}}),
               "teapot": (418, {"error": {"message": "I'm a teapot"}})}
    for key, exc in (("auth", LLMAuthError), ("ctx", ContextLengthError), ("teapot", LLMServerError)):
        with RecordingServer(lambda p, r, k=key: replies[k]) as srv:
            model = make_chat_model(cfg(srv.base_url, structured_method="json_schema"))
            with pytest.raises(exc) as ei:
                structured_call(model, Need, MSGS)
        assert ei.value.model == "fake-model" and ei.value.raw and ei.value.attempts == 1


def test_cli_check_reports_a_refused_connection_as_json_exit_2():
    from app import app

    base = f"http://127.0.0.1:{closed_port()}/v1"
    r = CliRunner().invoke(app, ["llm", "check", "--backend", "openai", "--base-url", base, "--model", "m",
                                 "--timeout", "1", "--json"], env={"INTENTREC_LLM_MAX_RETRIES": "0"})
    out = json.loads(r.stdout)
    assert r.exit_code == 2
    assert out["valid"] is False and out["error"]["type"] == "LLMConnectionError" and base in out["error"]["message"]


# ----- request shapes (what each structured method sends) ----------------------------------------------

def test_vllm_sends_structured_outputs_extra_body():
    with RecordingServer(lambda p, r: (200, chat_completion(GOOD))) as srv:
        model = make_chat_model(cfg(srv.base_url, vllm=True, seed=7))
        res = structured_call(model, Need, MSGS)
        body = srv.chat_bodies()[0]
    assert res.value == Need(need="baby wipes", category="baby")
    assert body["structured_outputs"] == {"json": Need.model_json_schema()}
    assert "response_format" not in body and "tools" not in body and "guided_json" not in body
    assert body["model"] == "fake-model" and body["max_tokens"] == 50 and body["seed"] == 7
    assert "max_completion_tokens" not in body
    assert res.record.prompt_tokens == 11 and res.record.completion_tokens == 7
    # the schema hint is appended to the last user message; the shared system prefix is untouched
    assert body["messages"][0] == {"role": "system", "content": "shared context"}
    assert body["messages"][-1]["content"].startswith("what is needed?\n\nAnswer with one JSON object")


def vllm_like(chat: dict) -> Any:
    """A responder answering like vLLM: its model list says ``owned_by: "vllm"``."""
    def respond(path, req):
        if path.endswith("/models"):
            return 200, {"object": "list", "data": [{"id": "fake-model", "object": "model", "owned_by": "vllm"}]}
        return 200, chat
    return respond


def test_vllm_is_detected_from_the_model_list_without_the_flag():
    with RecordingServer(vllm_like(chat_completion(GOOD))) as srv:
        model = make_chat_model(cfg(srv.base_url))  # structured_method auto, vllm unset
        res = structured_call(model, Need, MSGS)
        body = srv.chat_bodies()[0]
        gets = [p for m, p, _ in srv.requests if m == "GET"]
        assert model.server_kind() == "vllm" and model.max_in_flight() == VLLM_CONCURRENCY
        structured_call(model, Need, MSGS)
        assert [p for m, p, _ in srv.requests if m == "GET"] == gets  # read once per base URL
    assert res.value.category == "baby" and gets == ["/v1/models"]
    assert body["structured_outputs"] == {"json": Need.model_json_schema()}
    assert "guided_json" not in body and "response_format" not in body and "tools" not in body


def test_other_servers_keep_the_default_limit_and_an_explicit_limit_wins():
    def respond(path, req):
        if path.endswith("/models"):
            return 200, model_list("fake-model")
        return 200, chat_completion(GOOD)

    with RecordingServer(respond) as srv:
        plain = make_chat_model(cfg(srv.base_url))
        assert plain.server_kind() == "openai-compatible" and plain.max_in_flight() == DEFAULT_CONCURRENCY
        assert make_chat_model(cfg(srv.base_url, concurrency=3)).max_in_flight() == 3
    with RecordingServer(vllm_like(chat_completion(GOOD))) as srv:
        assert make_chat_model(cfg(srv.base_url, concurrency=2)).max_in_flight() == 2


def test_vllm_answer_cut_off_at_max_tokens_names_the_whitespace_flag():
    padded = '{"need": "baby wipes",' + "\n" * 40
    with RecordingServer(vllm_like(chat_completion(padded, finish_reason="length"))) as srv:
        model = make_chat_model(cfg(srv.base_url))
        with pytest.raises(StructuredOutputError) as ei:
            structured_call(model, Need, MSGS, max_attempts=2)
    e = ei.value
    assert "cut off at max_tokens" in e.errors[-1]
    assert WHITESPACE_FLAG in str(e) and srv.base_url in str(e) and "'fake-model'" in str(e)
    assert "max_tokens=50" in e.hint


def test_answer_cut_off_elsewhere_says_to_raise_max_tokens_not_the_vllm_flag():
    def respond(path, req):
        if path.endswith("/models"):
            return 200, model_list("fake-model")
        return 200, chat_completion('{"need": "baby', finish_reason="length")

    with RecordingServer(respond) as srv, pytest.raises(StructuredOutputError) as ei:
        structured_call(make_chat_model(cfg(srv.base_url, structured_method="json_mode")), Need, MSGS,
                        max_attempts=1)
    assert "INTENTREC_LLM_MAX_TOKENS" in str(ei.value) and WHITESPACE_FLAG not in str(ei.value)


def test_vllm_async_path_sends_the_same_body():
    with RecordingServer(lambda p, r: (200, chat_completion(GOOD))) as srv:
        res = asyncio.run(astructured_call(make_chat_model(cfg(srv.base_url, vllm=True)), Need, MSGS))
        body = srv.chat_bodies()[0]
    assert res.value.category == "baby" and body["structured_outputs"]["json"]["title"] == "Need"


def test_json_schema_function_calling_and_json_mode_bodies():
    def respond(path, req):
        if "tools" in req:
            return 200, chat_completion(tool_call=("Need", GOOD), finish_reason="tool_calls")
        return 200, chat_completion(GOOD)

    with RecordingServer(respond) as srv:
        for method in ("json_schema", "function_calling", "json_mode"):
            res = structured_call(make_chat_model(cfg(srv.base_url, structured_method=method)), Need, MSGS)
            assert res.value == Need(need="baby wipes", category="baby"), method
        js, fc, jm = srv.chat_bodies()
    assert js["response_format"] == {"type": "json_schema",
                                     "json_schema": {"name": "Need", "schema": Need.model_json_schema()}}
    assert fc["tool_choice"] == {"type": "function", "function": {"name": "Need"}}
    assert fc["tools"][0]["function"]["name"] == "Need"
    assert fc["tools"][0]["function"]["parameters"]["required"] == ["need", "category"]
    assert jm["response_format"] == {"type": "json_object"}
    assert "JSON schema" in jm["messages"][-1]["content"]  # json_mode: the schema travels in the prompt


def test_detection_falls_back_and_is_cached_per_server():
    def respond(path, req):
        rf = req.get("response_format") or {}
        if rf.get("type") == "json_schema":  # like llama.cpp's server
            return 500, {"error": {"message": "Input should be 'text' or 'json_object'", "type": "internal_server_error"}}
        if "tools" in req:
            name = req["tool_choice"]["function"]["name"]
            args = '{"ok": true}' if name == "probe" else GOOD
            return 200, chat_completion(tool_call=(name, args), finish_reason="tool_calls")
        return 200, chat_completion(GOOD)

    with RecordingServer(respond) as srv:
        model = make_chat_model(cfg(srv.base_url))
        r1 = structured_call(model, Need, MSGS)
        r2 = structured_call(make_chat_model(cfg(srv.base_url)), Need, MSGS)  # a new object, same server
        bodies = srv.chat_bodies()
    assert r1.value == r2.value == Need(need="baby wipes", category="baby")
    assert detected_methods() == {(srv.base_url, "fake-model"): "function_calling"}
    # probes: json_schema (refused once, no retry), function_calling (ok); then two real calls
    assert len(bodies) == 4
    assert bodies[0]["response_format"]["type"] == "json_schema" and bodies[1]["tools"][0]["function"]["name"] == "probe"
    assert all(b["tools"][0]["function"]["name"] == "Need" for b in bodies[2:])


def test_model_is_discovered_from_the_server():
    with RecordingServer(lambda p, r: (200, model_list("Qwen/Qwen2.5-0.5B-Instruct", "other"))) as srv:
        model = make_chat_model(cfg(srv.base_url, model=None))
        assert model.model_name == "Qwen/Qwen2.5-0.5B-Instruct"
        assert srv.requests[0][:2] == ("GET", "/v1/models")


def test_concurrency_limit_holds_in_flight_requests():
    import threading

    state = {"now": 0, "peak": 0}
    lock = threading.Lock()

    def respond(path, req):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.15)
        with lock:
            state["now"] -= 1
        return 200, chat_completion(GOOD)

    with RecordingServer(respond) as srv:
        model = make_chat_model(cfg(srv.base_url, structured_method="json_mode", concurrency=2))

        async def many():
            return await asyncio.gather(*(astructured_call(model, Need, MSGS) for _ in range(6)))

        results = asyncio.run(many())
    assert len(results) == 6 and state["peak"] == 2


def test_connect_counter_counts_real_connects():
    with RecordingServer(lambda p, r: (200, model_list("m"))) as srv, _ConnectCounter() as c:
        port = srv.httpd.server_address[1]
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    assert c.count == 1
