"""LLM settings (CLI > env > file > defaults), the factory, and clean imports without vLLM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llm.errors import LLMConfigError
from llm.factory import make_chat_model, make_role_models
from llm.scripted import ScriptedChatModel
from llm.settings import LLMSettings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for k in list(os.environ):
        if k.startswith("INTENTREC_LLM_"):
            monkeypatch.delenv(k)


def test_defaults():
    s = LLMSettings()
    assert s.backend == "local" and s.structured_method == "auto" and s.vllm is False
    assert s.temperature == 0.2 and s.max_tokens == 1024 and s.n_ctx == 8192 and s.max_retries == 2
    assert s.api_key_value()  # a placeholder, the openai client insists on one
    assert s.public_dict()["api_key"] is None


def test_precedence_cli_over_env_over_file(tmp_path, monkeypatch):
    cfg = tmp_path / "intentrec.toml"
    cfg.write_text('[llm]\nbackend = "openai"\nmodel = "from-file"\ntemperature = 0.7\nmax_tokens = 99\n'
                   'base_url = "http://127.0.0.1:9/v1/"\n[llm.roles.explainer]\ntemperature = 1.1\n')
    s = LLMSettings.load(cfg)
    assert (s.backend, s.model, s.temperature, s.max_tokens) == ("openai", "from-file", 0.7, 99)
    assert s.base_url == "http://127.0.0.1:9/v1"  # trailing slash dropped
    monkeypatch.setenv("INTENTREC_LLM_MODEL", "from-env")
    monkeypatch.setenv("INTENTREC_LLM_MAX_TOKENS", "55")
    s = LLMSettings.load(cfg)
    assert (s.model, s.max_tokens, s.temperature) == ("from-env", 55, 0.7)
    s = LLMSettings.load(cfg, model="from-cli", max_tokens=None)  # None = flag not given
    assert (s.model, s.max_tokens) == ("from-cli", 55)
    assert s.for_role("explainer").temperature == 1.1
    assert s.for_role("planner").temperature == 0.7


def test_json_file_via_env_and_api_key_masked(tmp_path, monkeypatch):
    cfg = tmp_path / "llm.json"
    cfg.write_text(json.dumps({"backend": "scripted", "api_key": "sk-secret", "vllm": True}))
    monkeypatch.setenv("INTENTREC_LLM_CONFIG", str(cfg))
    s = LLMSettings()
    assert s.backend == "scripted" and s.vllm is True
    assert s.api_key_value() == "sk-secret"
    assert "sk-secret" not in json.dumps(s.public_dict()) and "sk-secret" not in repr(s)


def test_bad_settings_are_typed(tmp_path, monkeypatch):
    with pytest.raises(LLMConfigError, match="backend"):
        LLMSettings(backend="gpu-magic")
    bad = tmp_path / "bad.toml"
    bad.write_text('[llm]\ntemprature = 0.3\n')
    with pytest.raises(LLMConfigError, match="temprature"):
        LLMSettings.load(bad)
    with pytest.raises(LLMConfigError, match="not found"):
        LLMSettings.load(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[llm\n")
    with pytest.raises(LLMConfigError, match="cannot parse"):
        LLMSettings.load(broken)
    monkeypatch.setenv("INTENTREC_LLM_TEMPERATURE", "9")
    with pytest.raises(LLMConfigError, match="temperature"):
        LLMSettings()


def test_gguf_path_from_model_flag():
    assert LLMSettings(model="weights/other.gguf").gguf_path() == "weights/other.gguf"
    assert LLMSettings(model="served-name").gguf_path() is None
    assert LLMSettings(model_path="a.gguf", model="b.gguf").gguf_path() == "a.gguf"


def test_adapter_path_defaults_to_the_shipped_adapter_on_the_embedded_model_only(tmp_path, monkeypatch):
    import llm.settings as settings_module

    shipped = tmp_path / "shipped.gguf"
    monkeypatch.setattr(settings_module, "SHIPPED_ADAPTER", shipped)
    assert LLMSettings().adapter_path() is None  # nothing ships: the base model
    shipped.write_bytes(b"GGUF")
    assert LLMSettings().adapter_path() == str(shipped)
    assert LLMSettings(adapter="none").adapter_path() is None and LLMSettings(adapter=" None ").adapter_path() is None
    assert LLMSettings(adapter="mine.gguf").adapter_path() == "mine.gguf"
    # an adapter trained for the embedded model is not applied to another GGUF unless asked for
    assert LLMSettings(model_path="other.gguf").adapter_path() is None
    assert LLMSettings(model="other.gguf", adapter="mine.gguf").adapter_path() == "mine.gguf"
    monkeypatch.setenv("INTENTREC_LLM_ADAPTER", "none")
    assert LLMSettings().adapter_path() is None


def test_factory_scripted_and_role_sharing():
    s = LLMSettings(backend="scripted", roles={"explainer": {"temperature": 0.9}})
    m = make_chat_model(s, default="hi")
    assert isinstance(m, ScriptedChatModel) and m.invoke("x").content == "hi"
    models = make_role_models(s, ["planner", "expert", "explainer"], default="x")
    assert set(models) == {"default", "planner", "expert", "explainer"}
    assert models["planner"] is models["default"] and models["expert"] is models["default"]
    assert models["explainer"] is not models["default"]


def test_factory_missing_gguf_is_typed(tmp_path):
    m = make_chat_model(LLMSettings(model_path=str(tmp_path / "nope.gguf")))
    with pytest.raises(LLMConfigError, match="GGUF file not found"):
        m.invoke("hi")


def test_openai_backend_builds_without_network_when_model_given():
    from llm.openai_compat import OpenAICompatChatModel

    m = make_chat_model(LLMSettings(backend="openai", base_url="http://127.0.0.1:9/v1", model="m",
                                    timeout_s=3, max_retries=1, max_tokens=77, vllm=True))
    assert isinstance(m, OpenAICompatChatModel)
    assert (m.model_name, m.base_url, m.max_retries, m.timeout_s, m.vllm) == ("m", "http://127.0.0.1:9/v1", 1, 3, True)
    assert m.resolve_structured_method() == "vllm"
    payload = m._get_request_payload([("user", "hi")])
    assert payload["max_tokens"] == 77 and "max_completion_tokens" not in payload


def test_imports_cleanly_without_vllm():
    code = ("import sys, llm.factory, llm.openai_compat, llm.local, llm.settings, llm.cli, llm.check, "
            "evals.bench_llm; assert 'vllm' not in sys.modules; assert 'llama_cpp' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_llm_check_scripted_backend():
    from typer.testing import CliRunner

    from app import app

    r = CliRunner().invoke(app, ["llm", "check", "--backend", "scripted", "--json"])
    out = json.loads(r.stdout)
    assert r.exit_code == 0
    assert out["valid"] is True and out["parsed"]["category"] == "baby" and out["attempts"] == 1
    assert out["network_connects"] == 0
