"""Constrained GRPO (learning/grpo.py): the TRL reward function scores conversational completions with
the constrained reward or the summed ablation, and a real two-step run on the embedded model logs its
rewards, saves a peft adapter that ``train export`` reads, and resumes from its checkpoint."""

from __future__ import annotations

import json

import pytest

from learning.grpo import GRPO_LOG, GRPOSettings, reward_function, train_grpo
from tests.learning_support import answer, embed, row

GOOD = answer("frozen pizza", "green tea", "whole milk", "potato chips", "tomato salsa")  # every target category
REPEATS = answer("frozen pizza", "green tea", "green tea", "green tea", "green tea")  # fails the rules gate


def completions(*texts):
    return [[{"role": "assistant", "content": t}] for t in texts]


def test_the_reward_function_gates_accuracy_and_the_ablation_sums():
    rows = [row()]
    seen: list[dict] = []
    crs = reward_function(rows, "crs", embed, seen=seen)
    summed = reward_function(rows, "summed", embed)
    texts = completions(GOOD, REPEATS, "not json")
    got = crs(prompts=[None] * 3, completions=texts, row=[0, 0, 0])
    assert got == [pytest.approx(1.0), 0.0, 0.0]  # REPEATS has full accuracy but fails a gate
    assert [s["gates"]["valid"] for s in seen] == [True, True, False]
    s = summed(prompts=[None] * 3, completions=texts, row=[0, 0, 0])
    assert s[1] > 0.4 and s[2] == 0.0  # the summed ablation still pays the gated-out answer
    with pytest.raises(ValueError, match="reward must be one of"):
        reward_function(rows, "acc", embed)


@pytest.mark.slow
def test_two_grpo_steps_log_rewards_save_an_exportable_adapter_and_resume(tmp_path):
    from learning.export import export_gguf_lora

    out = tmp_path / "grpo"
    settings = GRPOSettings(out_dir=str(out), max_steps=2, num_generations=2, max_completion_length=24,
                            layers=1, save_steps=1, lr=1e-4)
    res = train_grpo([row(), row(targets=("Bakery",), new=())], embed, settings, progress=False)
    assert res.steps == 2 and res.prompts == 2 and res.resumed_from is None
    assert len(res.mean_reward_per_step) == 2 and len(res.valid_share_per_step) == 2
    assert all(0.0 <= v <= 1.0 for v in res.valid_share_per_step)
    log = json.loads((out / GRPO_LOG).read_text())
    assert log["settings"]["reward"] == "crs" and log["steps"] == 2
    assert (out / "adapter_model.safetensors").is_file() and (out / "checkpoint-2").is_dir()
    exported = export_gguf_lora(out, tmp_path / "grpo.gguf")
    assert exported["tensors"] == 2 * 7  # lora_a and lora_b of the 7 projections of the one top block
    more = train_grpo([row(), row(targets=("Bakery",), new=())], embed,
                      GRPOSettings(**{**settings.__dict__, "max_steps": 3}), progress=False)
    assert more.resumed_from.endswith("checkpoint-2") and more.steps == 3
