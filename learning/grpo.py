"""Constrained GRPO (RecGPT-V2) on the expert task, with TRL's ``GRPOTrainer`` ([6/7], step 4).

* **Policy.** The embedded GGUF read by transformers (``learning.sft.load_base``), with LoRA on the
  top blocks: a new adapter, or the SFT adapter continued (``init_adapter``). No reference model
  (``beta = 0``, TRL's default), so a step costs one policy only.
* **Prompts** are the task rows of ``train data`` (the graph's expert prompts); each row's ``meta``
  carries what the reward needs (the window's categories, the new ones, the phrase -> category map,
  the recent purchases), looked up through a ``row`` column.
* **Reward.** ``learning.reward.score`` on each sampled answer: ``crs`` (accuracy gated by the rule
  pass share, R_div and the length band) or, for the ablation, ``summed``. One function for both,
  the one the self-training round uses.
* **Generation** is TRL's own (transformers ``generate``, sampling), without the JSON grammar the
  graph decodes under: an answer that is not valid JSON in the expert's shape scores 0, so the
  policy is also rewarded for keeping the format the SFT stage taught it.
* **Checkpoints** are TRL's (``checkpoint-N`` folders in ``out_dir``); a rerun resumes from the last
  one. The final adapter is saved in ``out_dir`` in peft's format, so ``train export`` takes it as it
  takes an SFT adapter. Per-step reward means, wall time and token counts go to ``grpo_log.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from learning.reward import RewardConfig
from learning.self_train import reward_of

GRPO_LOG = "grpo_log.json"
REWARDS = ("crs", "summed")


@dataclass
class GRPOSettings:
    out_dir: str = "grpo-adapter"
    reward: str = "crs"
    init_adapter: str | None = None
    max_steps: int = 10
    num_generations: int = 4
    #: prompts per optimiser step (each sampled ``num_generations`` times)
    prompts_per_step: int = 1
    max_completion_length: int = 160
    temperature: float = 0.8
    lr: float = 1e-5
    layers: int = 8
    seed: int = 42
    save_steps: int = 5
    threads: int | None = None


@dataclass
class GRPOResult:
    steps: int = 0
    prompts: int = 0
    reward: str = "crs"
    mean_reward_per_step: list[float] = field(default_factory=list)
    valid_share_per_step: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    wall_s: float = 0.0
    out_dir: str = ""
    resumed_from: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def reward_function(rows: Sequence[dict], kind: str, embed: Callable[[list[str]], np.ndarray],
                    config: RewardConfig = RewardConfig(), seen: list[dict] | None = None) -> Callable[..., list[float]]:
    """TRL reward function: ``(prompts, completions, row=[...]) -> rewards``, ``kind`` crs or summed.
    Every scored answer's reward is appended to ``seen`` when given (the log's per-step figures)."""
    if kind not in REWARDS:
        raise ValueError(f"reward must be one of {REWARDS}, not {kind!r}")

    def rewards(prompts: list, completions: list, row: list[int], **_: Any) -> list[float]:
        out = []
        for comp, i in zip(completions, row, strict=True):
            text = comp[-1]["content"] if isinstance(comp, list) else str(comp)
            r = reward_of(text, rows[i], embed, config)
            if seen is not None:
                seen.append(r.as_dict())
            out.append(float(getattr(r, kind)))
        return out

    rewards.__name__ = f"reward_{kind}"
    return rewards


def policy(settings: GRPOSettings, base: tuple[Any, Any] | None = None) -> tuple[Any, Any]:
    """(trainable peft model, tokenizer): the SFT adapter continued, or a new LoRA on the top blocks."""
    from learning.sft import SFTConfig, load_base, lora_model

    model, tok = base or load_base()
    if settings.init_adapter:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, settings.init_adapter, is_trainable=True), tok
    return lora_model(model, SFTConfig(layers=settings.layers)), tok


def train_grpo(rows: Sequence[dict], embed: Callable[[list[str]], np.ndarray], settings: GRPOSettings, *,
               base: tuple[Any, Any] | None = None, progress: bool = True) -> GRPOResult:
    """Run GRPO on the task rows in ``rows`` and save the adapter in ``settings.out_dir``."""
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    tasks = [r for r in rows if r.get("meta", {}).get("stage") == "task"]
    if not tasks:
        raise ValueError("no task rows (meta.stage == 'task') to sample prompts from")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    t0 = time.perf_counter()
    out = Path(settings.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tok = policy(settings, base)
    seen: list[dict] = []
    reward = reward_function(tasks, settings.reward, embed, seen=seen)
    data = Dataset.from_list([{"prompt": r["prompt"], "row": i} for i, r in enumerate(tasks)])
    args = GRPOConfig(output_dir=str(out), max_steps=settings.max_steps, learning_rate=settings.lr,
                      per_device_train_batch_size=settings.num_generations * settings.prompts_per_step,
                      num_generations=settings.num_generations, max_completion_length=settings.max_completion_length,
                      temperature=settings.temperature, seed=settings.seed, use_cpu=True, bf16=False,
                      logging_steps=1, save_steps=settings.save_steps, report_to="none",
                      disable_tqdm=not progress, beta=0.0,
                      # TRL turns gradient checkpointing on by default, which turns the KV cache off, so
                      # every sampled token re-reads the whole ~3.6k-token prompt; with LoRA on the top
                      # blocks only those blocks keep activations, which fits in memory without it
                      gradient_checkpointing=False)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data, processing_class=tok)
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    res = GRPOResult(reward=settings.reward, out_dir=str(out),
                     resumed_from=str(checkpoints[-1]) if checkpoints else None)
    trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)
    trainer.model.save_pretrained(str(out), safe_serialization=True)
    res.steps = int(trainer.state.global_step)
    logs = [h for h in trainer.state.log_history if "reward" in h]
    res.mean_reward_per_step = [round(float(h["reward"]), 4) for h in logs]
    per = settings.num_generations * settings.prompts_per_step
    res.valid_share_per_step = [round(float(np.mean([s["gates"]["valid"] for s in seen[k:k + per]])), 3)
                                for k in range(0, len(seen), per)]
    res.prompts = len(seen) // settings.num_generations
    res.completion_tokens = int(sum(h.get("completions/mean_length", 0.0) * per for h in logs))
    res.wall_s = round(time.perf_counter() - t0, 2)
    (out / GRPO_LOG).write_text(json.dumps({**res.as_dict(), "settings": asdict(settings)}, indent=2))
    return res


__all__ = ["GRPOResult", "GRPOSettings", "REWARDS", "policy", "reward_function", "train_grpo"]
