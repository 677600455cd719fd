"""The production backend for real: vLLM's CPU build on loopback, serving the embedded model's weights
(``app.py llm vllm setup`` builds its environment; ``scripts/test.sh`` runs that setup first).

No mocks on this path: ``llm check`` through the CLI, a whole graph run for one real user with every
structured call valid, a bad model name and a killed server, each giving its typed error. When vLLM
is not set up, the fixture fails saying how to set it up; it never skips."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.checkpoint.memory import InMemorySaver
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from behavior.adapters import load_dataset_cached
from intentrec.service import IntentRec, small_model_profile
from llm.errors import LLMConnectionError, ModelNotFoundError
from llm.factory import make_chat_model
from llm.openai_compat import VLLM_CONCURRENCY, detected_methods, forget_detected_methods
from llm.settings import LLMSettings
from llm.structured import structured_call
from llm.vllm_server import SERVED_MODEL, VllmHome, VllmServer, require_ready
from retrieval.service import load_or_build_retriever
from retrieval.text_encoder import TextEncoder
from runlog.store import RunLog
from tests.test_tools import SMALL

pytestmark = [pytest.mark.llm, pytest.mark.vllm]


class Need(BaseModel):
    need: str = Field(max_length=60)
    urgent: bool


MSGS = [SystemMessage("You infer shopping needs."), HumanMessage("Bought: diapers, baby wipes. Need?")]


@pytest.fixture(scope="module")
def server():
    home = VllmHome.default()
    require_ready(home)  # a clear failure naming 'python app.py llm vllm setup', never a skip
    forget_detected_methods()
    srv = VllmServer(home, max_model_len=4096, dev_mode=True)  # dev mode: the bench's prefix-cache reset
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def settings(base: str, **kw) -> LLMSettings:
    return LLMSettings(**{"backend": "openai", "base_url": base, "temperature": 0.0, "timeout_s": 120,
                          "max_retries": 1, **kw})


def test_llm_check_through_vllm_detects_the_server(server):
    from app import app

    res = CliRunner().invoke(app, ["llm", "check", "--backend", "openai", "--base-url", server.base_url, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["valid"] is True and out["model"] == SERVED_MODEL
    assert out["structured_method"] == "vllm"  # detected from GET /models, no --vllm flag
    assert out["completion_tokens"] > 0 and out["prompt_tokens"] > 20


def test_structured_call_sends_structured_outputs_and_closes_the_json(server):
    model = make_chat_model(settings(server.base_url, max_tokens=128))
    res = structured_call(model, Need, MSGS, max_attempts=1)
    assert isinstance(res.value, Need) and res.record.attempts == 1
    assert detected_methods()[(server.base_url, SERVED_MODEL)] == "vllm"
    assert model.max_in_flight() == VLLM_CONCURRENCY
    # the whitespace flag is on: the answer is compact JSON, not padded until max_tokens
    assert res.record.completion_tokens < 128 and "\n" not in res.record.raw


def test_the_open_vocabulary_expert_schema_is_enforced_by_the_server(server):
    """The expert's open-vocabulary tag has a ``pattern`` and length bounds; xgrammar refuses the two on
    one string (HTTP 400). The pattern's words are bounded, so the server gets the pattern and every
    answer is a valid one. (When the pattern was the part dropped, the 135M model wrote tags such as
    "24.2" and failed client-side validation on every attempt.)"""
    from agents.expert import TAG_PATTERN, expert_schema

    model = make_chat_model(settings(server.base_url, max_tokens=300))
    msgs = [SystemMessage("You write grocery tags."), HumanMessage("One intent and two tags for a baker. Tags like 24.2 or 2-1.")]
    res = structured_call(model, expert_schema(2, None), msgs, max_attempts=1)
    assert 1 <= len(res.value.tags) <= 2 and all(re.fullmatch(TAG_PATTERN, t.tag) for t in res.value.tags)
    assert res.record.attempts == 1


def test_the_prefix_cache_reset_empties_vllms_cache(server):
    """``bench system`` runs the same users at every concurrency level and empties the cache in
    between; a repeated prompt hits the cache before the reset and misses it after."""
    import httpx

    from llm.vllm_server import metrics_delta, read_metrics, reset_prefix_cache

    body = {"model": SERVED_MODEL, "max_tokens": 2,
            "messages": [{"role": "user", "content": " ".join(f"word{i}" for i in range(400))}]}

    def hits() -> int:
        before = read_metrics(server.base_url)
        httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=120).raise_for_status()
        return metrics_delta(before, read_metrics(server.base_url))["prefix_cache_hits"]

    hits()
    assert hits() > 400  # the repeated prompt is served from the cache
    reset_prefix_cache(server.base_url)
    assert hits() == 0


def test_a_prompt_longer_than_vllms_default_token_budget_with_a_seed(server):
    """vLLM's CPU build kills its engine when a seeded request is prefilled in chunks (its default
    budget is 2,048 tokens); the server is started without chunked prefill, so this answers."""
    history = " ".join(f"bought item {i} (whole milk, eggs, bread);" for i in range(220))
    msgs = [SystemMessage("You infer shopping needs."), HumanMessage(f"History: {history}\nNeed?")]
    model = make_chat_model(settings(server.base_url, seed=42, max_tokens=96))
    res = structured_call(model, Need, msgs, max_attempts=1)
    assert res.record.prompt_tokens > 2048 and isinstance(res.value, Need)
    again = structured_call(model, Need, MSGS, max_attempts=1)  # the engine is still alive
    assert isinstance(again.value, Need)


@pytest.mark.parametrize("vocabulary", ["catalogue", "open"])
def test_a_whole_graph_run_for_a_real_user(server, tmp_path_factory, vocabulary):
    """The small-model profile (catalogue tags), and open tags with a short history (the context
    ``bench system`` sends, where every expert answer once failed validation)."""
    base = tmp_path_factory.getbasetemp()
    ds = load_dataset_cached("completejourney")
    encoder = TextEncoder(cache_dir=base / "text-cache")
    retriever = load_or_build_retriever(ds, SMALL, progress=False, root=base / "retrieval-cache", encoder=encoder)
    s = settings(server.base_url)
    model = make_chat_model(s)
    assert s.small_model(model.model_name)  # the embedded weights get the embedded model's defaults
    store = RunLog(tmp_path_factory.mktemp("vllm-run") / "runs.sqlite")
    rec = IntentRec(dataset=ds, retriever=retriever, models={"default": model}, runlog=store,
                    checkpointer=InMemorySaver(),
                    # the planner agent too (the profile's default writes personas without a call)
                    **{**small_model_profile(ds, encoder), "persona_source": "llm", "tag_vocabulary": vocabulary,
                       **({"history_budget": 150} if vocabulary == "open" else {})})
    user = retriever.user_ids[0]
    out = rec.recommend(user, now="2017-10-01", n_personas=2, n_tags=4, n_items=4)
    assert out["status"] == "ok" and out["recommendations"] and len(out["recommendations"]) <= 4 and out["tags"]
    run = store.runs(user=str(user))[0]
    assert run["status"] == "ok"
    calls = store.calls(run["run_id"])
    assert {c["node"] for c in calls} >= {"planner", "expert"}
    for c in calls:  # every structured call came back valid from the server
        assert not c["error"], c
        assert c["model"] == SERVED_MODEL and c["parsed"] is not None and c["completion_tokens"] > 0


def test_a_bad_model_name_is_model_not_found(server):
    model = make_chat_model(settings(server.base_url, model="no-such-model"))
    with pytest.raises(ModelNotFoundError) as ei:
        structured_call(model, Need, MSGS)
    assert ei.value.available == [SERVED_MODEL] and "no-such-model" in str(ei.value)


def test_a_killed_server_is_a_typed_connection_error(server):
    """Last in this file: it kills the module's server."""
    model = make_chat_model(settings(server.base_url, model=SERVED_MODEL, max_retries=0, timeout_s=10))
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(timeout=30)
    with pytest.raises(LLMConnectionError) as ei:
        structured_call(model, Need, MSGS)
    assert server.base_url in str(ei.value) and ei.value.base_url == server.base_url
