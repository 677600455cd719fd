"""LoRA SFT of the embedded model (learning/sft.py) on a tiny real slice: the loss falls, only the
adapter's top blocks train, checkpoints are safetensors with their config, a resumed run continues
the step count, and prompt tokens carry no loss."""

from __future__ import annotations

import json

import pytest

from learning.dataset import BuildConfig, build_examples
from learning.sft import SFTConfig, encode, load_base, train_sft

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base():
    return load_base()


@pytest.fixture(scope="module")
def rows(cj):
    built, _ = build_examples(cj, BuildConfig(cutoffs=("2017-08-20",), users_per_cutoff=1, curriculum=4))
    return [r for r in built if r["meta"]["stage"] == "curriculum"][:2]


def test_labels_cover_the_completion_only(base, rows):
    _, tok = base
    ids, labels = encode(rows[0], tok, 4096)
    n_comp = sum(1 for x in labels if x != -100)
    completion = tok(rows[0]["completion"][0]["content"] + tok.eos_token, add_special_tokens=False)["input_ids"]
    assert n_comp == len(completion) and ids[-n_comp:] == completion
    assert tok.decode(ids[:-n_comp]).endswith("<|im_start|>assistant\n")  # the generation prompt, as llama.cpp renders it
    assert encode(rows[0], tok, 10) is None


def test_a_few_sft_steps_lower_the_loss_and_save_a_resumable_adapter(base, rows, tmp_path):
    cfg = SFTConfig(out_dir=str(tmp_path / "adapter"), max_steps=3, batch_size=2, grad_accum=1, lr=2e-3,
                    warmup_steps=1, layers=2, save_every=2)
    res = train_sft(rows, cfg, base=base, progress=False)
    assert res.steps == 3 and res.examples == 2 and len(res.losses) == 3
    assert res.losses[-1] < res.losses[0]  # the same two examples each step: the loss must fall
    out = tmp_path / "adapter"
    assert (out / "adapter_model.safetensors").is_file() and json.loads((out / "intentrec_sft.json").read_text())["layers"] == 2
    acfg = json.loads((out / "adapter_config.json").read_text())
    assert acfg["r"] == 8 and acfg["layers_to_transform"] == [28, 29]  # the top 2 of 30 blocks
    log = json.loads((out / "train_log.json").read_text())
    assert log["steps"] == 3 and log["losses"] == res.losses and log["tokens"] > 0
    # resume: two more steps continue from step 3
    more = train_sft(rows, SFTConfig(**{**cfg.__dict__, "max_steps": 5}), base=load_base(), resume=True, progress=False)
    assert more.steps == 5 and more.losses[:3] == res.losses and len(more.losses) == 5


def test_init_adapter_starts_from_the_given_weights_with_a_fresh_schedule(rows, tmp_path):
    from safetensors.torch import load_file

    first = SFTConfig(out_dir=str(tmp_path / "a"), max_steps=2, batch_size=2, grad_accum=1, lr=2e-3,
                      warmup_steps=1, layers=2, save_every=2)
    train_sft(rows, first, base=load_base(), progress=False)
    trained = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    assert any(float(v.abs().max()) > 0 for k, v in trained.items() if "lora_B" in k)
    # lr 0: one step from the init adapter must leave exactly its weights; from scratch, LoRA's zero B
    frozen = dict(max_steps=1, batch_size=2, grad_accum=1, lr=0.0, warmup_steps=1, layers=2)
    res = train_sft(rows, SFTConfig(out_dir=str(tmp_path / "b"), init_adapter=str(tmp_path / "a"), **frozen),
                    base=load_base(), progress=False)
    first_losses = json.loads((tmp_path / "a" / "train_log.json").read_text())["losses"]
    assert res.steps == 1 and res.losses[0] < first_losses[0]
    again = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
    assert again.keys() == trained.keys() and all((again[k] == trained[k]).all() for k in trained)
    assert json.loads((tmp_path / "b" / "intentrec_sft.json").read_text())["init_adapter"] == str(tmp_path / "a")
    scratch = train_sft(rows, SFTConfig(out_dir=str(tmp_path / "c"), **frozen), base=load_base(), progress=False)
    fresh = load_file(str(tmp_path / "c" / "adapter_model.safetensors"))
    assert all(float(v.abs().max()) == 0 for k, v in fresh.items() if "lora_B" in k)
    assert scratch.losses[0] == pytest.approx(first_losses[0], rel=1e-4) and scratch.losses[0] > res.losses[0]


def test_prefix_groups_join_consecutive_prompts_that_share_enough_tokens():
    from learning.sft import prefix_groups

    prompts = [[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 7], [9, 9], [1, 2, 3, 4]]
    assert prefix_groups(prompts, 3) == [[0, 1], [2], [3], [4]]  # only neighbours join; [1,2,7] shares 2
    assert prefix_groups(prompts, 2) == [[0, 1, 2], [3], [4]]
    assert prefix_groups(prompts, 5) == [[0], [1], [2], [3], [4]]


def test_the_frozen_prompt_pass_gives_the_full_loss_runs_a_shared_prefix_once_and_trains_the_adapter(rows):
    import torch

    from learning.sft import frozen_prompt_backward, lora_model

    model, tok = load_base()
    model = lora_model(model, SFTConfig(layers=2))
    (ids0, lab0), (ids1, lab1) = (encode(r, tok, 4096) for r in rows)
    n0 = sum(1 for x in lab0 if x == -100)
    other = ids1[sum(1 for x in lab1 if x == -100):]
    data = [(ids0, lab0), (ids0[:n0] + other, [-100] * n0 + other), (ids1, lab1)]  # rows 0 and 1: one prompt
    with torch.no_grad():
        full = [model(input_ids=torch.tensor([i]), labels=torch.tensor([lab])).loss.item() for i, lab in data]
    model.zero_grad()
    losses, evaluated = frozen_prompt_backward(model, data, min_shared=len(ids0[:n0]), bf16=False)
    assert losses == pytest.approx(full, rel=1e-4)
    n1 = sum(1 for x in lab1 if x == -100)
    assert evaluated == n0 + len(ids0) - n0 + len(other) + len(ids1)  # the shared prompt ran once, row 2 alone
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads) and any(float(g.abs().max()) > 0 for g in grads)
    assert n1 > 0
