"""A real HTTP round trip: ``python -m llama_cpp.server`` with the embedded GGUF on loopback, called
through the ``openai`` backend (ChatOpenAI underneath). No mocks on this path."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Literal

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from core.processes import free_port, stop, wait_http
from llm.errors import SchemaNotSupportedError, StructuredOutputError
from llm.factory import make_chat_model
from llm.local import default_gguf_path
from llm.openai_compat import detected_methods
from llm.settings import LLMSettings
from llm.structured import astructured_call, structured_call

pytestmark = pytest.mark.llm

ALIAS = "smollm2-135m"


class Need(BaseModel):
    need: str = Field(max_length=60)
    category: Literal["baby", "food", "home"]


MSGS = [SystemMessage("You infer shopping needs."), HumanMessage("Bought: diapers, baby wipes. Need?")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("llama_server") / "server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(default_gguf_path()), "--model_alias", ALIAS,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1", "--n_threads_batch", "1"]
    with open(log, "wb") as fh:  # a file, not a pipe: llama.cpp's load log would fill a pipe and block
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}/v1"
        try:
            wait_http(f"{base}/models", timeout_s=60, proc=proc)
        except (TimeoutError, RuntimeError) as e:
            raise RuntimeError(f"{e}; server log tail: {log.read_text(errors='replace')[-2000:]}") from e
        yield base
    finally:
        stop(proc, 10)


def settings(base: str, **kw) -> LLMSettings:
    return LLMSettings(**{"backend": "openai", "base_url": base, "max_tokens": 64, "temperature": 0.0,
                          "timeout_s": 60, "max_retries": 1, **kw})


def test_structured_call_end_to_end_detects_function_calling(server):
    model = make_chat_model(settings(server))  # no model name: asked from GET /models
    assert model.model_name == ALIAS
    res = structured_call(model, Need, MSGS)
    assert isinstance(res.value, Need) and res.value.category in ("baby", "food", "home")
    assert res.record.model_id == ALIAS and res.record.prompt_tokens > 20 and res.record.completion_tokens > 0
    # llama.cpp's server answers json_schema with HTTP 500 and honours a forced tool call
    assert detected_methods()[(server, ALIAS)] == "function_calling"
    assert json.loads(res.record.raw)["category"] == res.value.category


def test_async_round_trip(server):
    model = make_chat_model(settings(server, model=ALIAS))
    res = asyncio.run(astructured_call(model, Need, MSGS))
    assert isinstance(res.value, Need) and res.record.completion_tokens > 0


def test_json_schema_pinned_is_a_schema_the_server_cannot_enforce(server):
    model = make_chat_model(settings(server, model=ALIAS, structured_method="json_schema", max_retries=0))
    with pytest.raises(SchemaNotSupportedError) as ei:
        structured_call(model, Need, MSGS)
    e = ei.value
    assert e.method == "json_schema" and e.schema == "Need" and e.model == ALIAS
    assert "HTTP 500" in str(e) and "function_calling" in str(e)  # the hint names the way out
    assert "json_schema" in e.raw[0]  # the server's own body is carried


def test_truncated_output_from_server_is_typed(server):
    model = make_chat_model(settings(server, model=ALIAS, max_tokens=3))
    with pytest.raises(StructuredOutputError) as ei:
        structured_call(model, Need, MSGS, max_attempts=2)
    e = ei.value
    assert e.attempts == 2 and len(e.raw) == 2 and e.model == ALIAS
    assert all(r.startswith("{") for r in e.raw)


def test_llamacpp_server_does_not_validate_model_names(server):
    """Checked, not assumed: llama.cpp's server answers for any model name (so the wrong-name test
    uses a loopback server with OpenAI's real 404 body, in test_llm_faults)."""
    model = make_chat_model(settings(server, model="no-such-model", max_tokens=4))
    msg = model.invoke("hi")
    assert msg.response_metadata["model_name"] == "no-such-model"
    assert msg.usage_metadata["output_tokens"] > 0


def test_llm_check_cli_against_the_server(server):
    from app import app

    r = CliRunner().invoke(app, ["llm", "check", "--backend", "openai", "--base-url", server, "--model", ALIAS,
                                 "--max-tokens", "96", "--json"])
    out = json.loads(r.stdout)
    assert r.exit_code == 0, r.stdout
    assert out["structured_method"] == "function_calling" and out["model"] == ALIAS
    assert out["valid"] is True and out["completion_tokens"] > 0 and out["tokens_per_s"] > 0
    assert out["parsed"]["category"] in ("baby", "food", "home", "outdoor", "electronics", "clothing", "other")
