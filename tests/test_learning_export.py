"""A LoRA adapter trained in transformers, exported to llama.cpp's GGUF LoRA format (learning/export.py):
llama.cpp with the file reproduces transformers with the adapter (the drift check), the Q/K row
permutation matters, and the local backend's ``adapter`` setting applies it (``none``: the base model)."""

from __future__ import annotations

import pytest
import torch
from langchain_core.messages import HumanMessage
from peft import LoraConfig, get_peft_model

import learning.export as export
from learning.sft import TARGET_MODULES, load_base
from llm.local import LocalChatModel, adapter_id

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A seeded random LoRA on the top 3 blocks, strong enough to move the next-token distribution."""
    torch.manual_seed(0)
    model, _ = load_base()
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(TARGET_MODULES),
                                          layers_to_transform=[27, 28, 29], init_lora_weights=False, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    d = tmp_path_factory.mktemp("adapter")
    pm.save_pretrained(str(d))
    out = d / "adapter.gguf"
    info = export.export_gguf_lora(d, out)
    return d, out, info


def test_export_writes_every_lora_tensor(adapter):
    _, out, info = adapter
    assert info["tensors"] == 3 * len(TARGET_MODULES) * 2 and info["rank"] == 4 and info["alpha"] == 8.0
    assert info["bytes"] == out.stat().st_size and len(info["sha256"]) == 64


def test_llama_cpp_with_the_exported_adapter_matches_transformers(adapter, monkeypatch):
    d, out, _ = adapter
    res = export.drift(d, out, export.DRIFT_PROMPTS[:2])
    assert res["top_agrees"] == 2 and res["passed"] and res["excess"] <= export.DRIFT_TOLERANCE, res
    for row in res["prompts"]:  # the adapter moves the distribution far more than the two engines differ
        assert row["adapter_effect_hf"] > 0.3 and row["adapter_effect_llama"] > 0.3, res
        assert row["max_abs_diff"] < 0.25 and row["max_abs_diff"] < row["adapter_effect_hf"] / 2, res
    # without the Q/K row permutation the adapter means something else in llama.cpp
    monkeypatch.setattr(export, "permute_rows", lambda w, n: w)
    wrong = out.with_name("unpermuted.gguf")
    export.export_gguf_lora(d, wrong)
    assert export.drift(d, wrong, export.DRIFT_PROMPTS[:2])["max_abs_diff"] > res["max_abs_diff"]


def test_the_adapter_setting_in_the_local_backend(adapter):
    _, out, info = adapter
    ask = [HumanMessage("Name one grocery item.")]
    base = LocalChatModel(n_ctx=1024, max_tokens=12, temperature=0.0)
    none = LocalChatModel(n_ctx=1024, max_tokens=12, temperature=0.0, adapter="none")
    tuned = LocalChatModel(n_ctx=1024, max_tokens=12, temperature=0.0, adapter=str(out))
    assert none.model_name == base.model_name and tuned.model_name == base.model_name + adapter_id(out)
    assert tuned.model_name.endswith("+" + info["sha256"][:12])
    assert none.invoke(ask).content == base.invoke(ask).content  # none: the base model's output
    tuned_text = tuned.invoke(ask).content
    assert tuned_text != base.invoke(ask).content
    # the parallel path's own context applies the adapter too: the same greedy text as one call at a time
    serial = LocalChatModel(n_ctx=1024, max_tokens=12, temperature=0.0, adapter=str(out), parallel_sequences=1)
    assert serial.invoke(ask).content == tuned_text
