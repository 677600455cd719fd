"""Supervised fine-tuning of the embedded model with LoRA ([6/7], step 2).

* **Base model.** The embedded GGUF (SmolLM2-135M-Instruct, Q4_1) read by transformers with
  ``gguf_file=`` (dequantised to float32; needs the ``gguf`` package), so the adapter is trained on
  the weights llama.cpp serves, not on a different checkpoint.
* **Tokens.** A row's prompt is rendered with the tokenizer's chat template (the GGUF's own, the one
  llama.cpp applies) with the generation prompt; the completion and the end-of-turn token follow.
  The loss is on the completion only (prompt labels are -100).
* **LoRA** on the attention and MLP projections of the top ``layers`` blocks (``peft``); the rest is
  frozen. On 2 CPU cores a full 135M model trains at tens of tokens per second, so the top blocks
  only is what makes a run fit in minutes.
* **Prompt without gradient** (``prompt_grad="frozen"``, the default). A row is a ~3.5k-token prompt
  and a ~100-token answer, and the K persona rows of a user share nearly all of their prompt. The
  prompt therefore runs without gradient (in bfloat16 where the CPU has native bf16), once per run of
  consecutive rows that share a prefix of at least ``min_shared_prefix`` tokens (rows are shuffled in
  those runs, not one by one); its KV cache is kept and cropped back for each row, and only the answer
  tokens run with gradient, attending to that cache. The loss is the same number as the full pass
  (the forward pass is unchanged); the gradient no longer flows into the prompt's keys and values
  through the adapted blocks. ``prompt_grad="full"`` is the exact gradient: one padded pass per
  micro-batch, about 3x slower on CPU.
* **Loop.** A plain torch loop (AdamW, linear warm-up and decay, gradient accumulation, clipping),
  fixed seeds, a tqdm bar, a checkpoint (adapter as safetensors, config and optimiser state) every
  ``save_every`` steps and at the end; ``resume=True`` continues from the last checkpoint in
  ``out_dir``. The losses, token counts and wall time are written to ``train_log.json``.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

ADAPTER_CONFIG = "intentrec_sft.json"
TRAIN_LOG = "train_log.json"
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class SFTConfig:
    out_dir: str = "sft-adapter"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    #: LoRA on the top this many transformer blocks (SmolLM2-135M has 30)
    layers: int = 8
    lr: float = 2e-4
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 1
    grad_accum: int = 4
    max_len: int = 4096
    warmup_steps: int = 5
    seed: int = 42
    save_every: int = 50
    gguf_path: str | None = None
    threads: int | None = None
    #: a trained adapter folder to start from (its weights; a new optimiser and schedule): the next SFT
    #: of a self-training round continues the adapter that sampled the set. Its LoRA shape wins
    init_adapter: str | None = None
    #: "frozen": the prompt runs without gradient, its KV cache shared by consecutive rows (see above);
    #: "full": the exact gradient through the prompt too
    prompt_grad: Literal["frozen", "full"] = "frozen"
    #: consecutive rows share one prompt pass when their common prefix is at least this many tokens
    min_shared_prefix: int = 256


@dataclass
class SFTResult:
    steps: int = 0
    examples: int = 0
    skipped_too_long: int = 0
    tokens: int = 0
    #: tokens actually run through the model (a shared prompt prefix counts once)
    evaluated_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0
    losses: list[float] = field(default_factory=list)
    out_dir: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_base(gguf_path: str | Path | None = None) -> tuple[Any, Any]:
    """The embedded GGUF as a transformers causal LM (float32) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.paths import default_gguf_path

    p = Path(gguf_path) if gguf_path else default_gguf_path()
    tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
    # The GGUF's weights are dequantised to plain float32 tensors on load, but transformers still marks
    # the model as GGUF-quantised, and its Trainer (TRL's GRPO) refuses to train such a model.
    model.hf_quantizer = None
    model.is_quantized = False
    return model, tok


def encode(row: dict, tokenizer: Any, max_len: int) -> tuple[list[int], list[int]] | None:
    """(input ids, labels) for one prompt/completion row; None when it is longer than ``max_len``."""
    prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    completion = row["completion"][0]["content"] + tokenizer.eos_token
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if len(p_ids) + len(c_ids) > max_len:
        return None
    return p_ids + c_ids, [-100] * len(p_ids) + c_ids


def lora_model(model: Any, config: SFTConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    n_layers = model.config.num_hidden_layers
    top = list(range(max(0, n_layers - config.layers), n_layers))
    lc = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                    target_modules=list(TARGET_MODULES), layers_to_transform=top, task_type="CAUSAL_LM")
    return get_peft_model(model, lc)


def train_sft(rows: Sequence[dict], config: SFTConfig, *, resume: bool = False, progress: bool = True,
              base: tuple[Any, Any] | None = None, say: Callable[[str], None] | None = None) -> SFTResult:
    """Train a LoRA adapter on ``rows`` (``learning.dataset`` rows) and save it in ``config.out_dir``."""
    import torch
    from tqdm.auto import tqdm

    random.seed(config.seed)
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    t0 = time.perf_counter()
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tok = base or load_base(config.gguf_path)
    res = SFTResult(out_dir=str(out))
    data = []
    for r in rows:
        enc = encode(r, tok, config.max_len)
        if enc is None:
            res.skipped_too_long += 1
            continue
        data.append(enc)
    if not data:
        raise ValueError(f"no training example fits max_len={config.max_len} ({res.skipped_too_long} too long)")
    res.examples = len(data)
    start_step = 0
    resuming = resume and (out / "adapter_model.safetensors").is_file()
    start_from = str(out) if resuming else config.init_adapter
    if start_from:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, start_from, is_trainable=True)
    else:
        model = lora_model(model, config)
    if resuming:
        state = json.loads((out / TRAIN_LOG).read_text()) if (out / TRAIN_LOG).is_file() else {}
        start_step, res.losses = int(state.get("steps", 0)), list(state.get("losses", []))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    per_epoch = math.ceil(len(data) / (config.batch_size * config.grad_accum))
    total = config.max_steps or per_epoch * config.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, config.warmup_steps))
                                              * max(0.0, 1 - s / max(1, total)))
    if start_step and (out / "optimizer.pt").is_file():
        ck = torch.load(out / "optimizer.pt", weights_only=True)  # our own file: tensors and numbers only
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
    order: list[int] = []  # shuffled passes over the data, the same for a resumed run (same seed)
    groups = prefix_groups([ids[:_prompt_len(lab)] for ids, lab in data], config.min_shared_prefix) \
        if config.prompt_grad == "frozen" else [[i] for i in range(len(data))]
    while len(order) < total * config.batch_size * config.grad_accum:
        order += [i for g in random.sample(groups, len(groups)) for i in g]
    bf16 = config.prompt_grad == "frozen" and _native_bf16()
    cursor = start_step * config.batch_size * config.grad_accum
    bar = tqdm(total=total, initial=start_step, disable=not progress, desc="sft", unit="step")
    step = start_step
    while step < total:
        opt.zero_grad(set_to_none=True)
        loss_sum, n_micro = 0.0, 0
        if config.prompt_grad == "frozen":
            n_rows = config.batch_size * config.grad_accum
            step_rows = [data[order[cursor + j]] for j in range(n_rows)]
            cursor += n_rows
            losses, evaluated = frozen_prompt_backward(model, step_rows, config.min_shared_prefix, bf16)
            loss_sum, n_micro = sum(losses), len(losses)
            res.tokens += sum(len(i) for i, _ in step_rows)
            res.evaluated_tokens += evaluated
            res.completion_tokens += sum(len(i) - _prompt_len(lab) for i, lab in step_rows)
        else:
            for _ in range(config.grad_accum):
                batch = [data[order[cursor + j]] for j in range(config.batch_size)]
                cursor += config.batch_size
                ids, mask, labels = _pad(batch, tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
                outp = model(input_ids=ids, attention_mask=mask, labels=labels)
                (outp.loss / config.grad_accum).backward()
                loss_sum += outp.loss.item()
                n_micro += 1
                res.tokens += int(ids.numel())
                res.evaluated_tokens += int(ids.numel())
                res.completion_tokens += int((labels != -100).sum())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        step += 1
        res.losses.append(round(loss_sum / n_micro, 5))
        bar.update(1)
        bar.set_postfix(loss=res.losses[-1])
        if step % config.save_every == 0 or step == total:
            res.steps = step
            _save(model, opt, sched, config, res, out, t0)
    bar.close()
    res.steps = step
    res.wall_s = round(time.perf_counter() - t0, 2)
    _save(model, opt, sched, config, res, out, t0)
    if say:
        say(f"sft: {res.steps} steps, {res.examples} examples, {res.tokens} tokens, {res.wall_s} s -> {out}")
    return res


def _prompt_len(labels: list[int]) -> int:
    return next((k for k, x in enumerate(labels) if x != -100), len(labels))


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    return next((k for k in range(n) if a[k] != b[k]), n)


def prefix_groups(prompts: Sequence[Sequence[int]], min_shared: int) -> list[list[int]]:
    """Indices of consecutive prompts grouped while they share at least ``min_shared`` leading tokens."""
    groups: list[list[int]] = []
    shared = 0
    for i, p in enumerate(prompts):
        if groups:
            k = _common_prefix(prompts[groups[-1][0]][:shared], p)
            if k >= min_shared:
                groups[-1].append(i)
                shared = k
                continue
        groups.append([i])
        shared = len(p)
    return groups


def _native_bf16() -> bool:
    import torch

    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def frozen_prompt_backward(model: Any, rows: Sequence[tuple[list[int], list[int]]], min_shared: int,
                           bf16: bool) -> tuple[list[float], int]:
    """Back-propagate the mean answer loss of ``rows`` with the prompts run without gradient.

    Consecutive rows whose prompts share at least ``min_shared`` leading tokens run that prefix once;
    its KV cache is cropped back to the prefix after each row. Returns each row's loss (the mean over
    its answer tokens, the number a full pass gives) and the tokens run through the model."""
    import torch
    import torch.nn.functional as F

    prompts = [ids[:_prompt_len(lab)] for ids, lab in rows]
    losses: list[float] = []
    evaluated = 0
    for group in prefix_groups(prompts, min_shared):
        shared = min(_common_prefix(prompts[group[0]], prompts[i]) for i in group)  # a lone row: all of it
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pre = model(input_ids=torch.tensor([prompts[group[0]][:shared]]), use_cache=True, logits_to_keep=1)
        cache, last = pre.cache, pre.logits[:, -1:].float()
        for layer in cache.layers:  # the cache continues in float32 with the rows' own tokens
            layer.keys, layer.values = layer.keys.float(), layer.values.float()
        evaluated += shared
        for i in group:
            ids, lab = rows[i]
            rest, answer = prompts[i][shared:], ids[len(prompts[i]):]
            first = last
            if rest:
                with torch.no_grad():
                    first = model(input_ids=torch.tensor([rest]), cache=cache, use_cache=True, logits_to_keep=1).logits
            out = model(input_ids=torch.tensor([answer]), cache=cache, use_cache=True)
            logits = torch.cat([first, out.logits[:, :-1]], dim=1)[0]
            loss = F.cross_entropy(logits, torch.tensor(answer))
            (loss / len(rows)).backward()
            losses.append(loss.item())
            evaluated += len(rest) + len(answer)
            if cache.get_seq_length() > shared:  # back to the shared prefix for the next row
                cache.crop(shared - cache.get_seq_length())
            for layer in cache.layers:  # the slices still point into this row's freed graph
                layer.keys, layer.values = layer.keys.detach(), layer.values.detach()
    return losses, evaluated


def _pad(batch: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[Any, Any, Any]:
    """Right-padded input ids, attention mask and labels (-100 on the padding)."""
    import torch

    n = max(len(i) for i, _ in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    for k, (i, lab) in enumerate(batch):
        ids[k, :len(i)] = torch.tensor(i)
        mask[k, :len(i)] = 1
        labels[k, :len(lab)] = torch.tensor(lab)
    return ids, mask, labels


def _save(model: Any, opt: Any, sched: Any, config: SFTConfig, res: SFTResult, out: Path, t0: float) -> None:
    import torch

    model.save_pretrained(str(out), safe_serialization=True)
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, out / "optimizer.pt")
    (out / ADAPTER_CONFIG).write_text(json.dumps(asdict(config), indent=2))
    log = {**res.as_dict(), "wall_s": round(time.perf_counter() - t0, 2)}
    (out / TRAIN_LOG).write_text(json.dumps(log, indent=2))


__all__ = ["SFTConfig", "SFTResult", "encode", "frozen_prompt_backward", "load_base", "lora_model",
           "prefix_groups", "train_sft"]
