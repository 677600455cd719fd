"""One self-training round (RecGPT-V1's self-training evolution; rejection-sampling fine-tuning).

For each task row of the training set, the current model (the embedded GGUF, with or without an
adapter) samples ``samples`` answers to the row's own prompt under the same grammar the graph uses
(the expert schema with the row's catalogue enum). The samples of one prompt are sent together,
so the local backend decodes them as parallel sequences of one round, sharing the prompt's KV cache.
Each answer is scored with the constrained reward (``learning.reward``); the best one whose reward
is positive (every gate passed) becomes the row's new target, and rows without one are dropped and
counted. The result is the next SFT set, in the same row format.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from agents.expert import MAX_INTENTS, expert_schema
from agents.tag_rules import keyed, normalize
from learning.reward import Reward, RewardConfig, score


@dataclass
class SelfTrainConfig:
    samples: int = 4
    temperature: float = 0.8
    seed: int = 42
    n_tags: int = 15
    reward: RewardConfig = field(default_factory=RewardConfig)


@dataclass
class SelfTrainStats:
    rows: int = 0
    samples: int = 0
    kept: int = 0
    dropped_no_passing_sample: int = 0
    invalid_samples: int = 0
    gate_failures: dict[str, int] = field(default_factory=lambda: {"pass": 0, "div": 0, "length": 0})
    mean_crs_kept: float = 0.0
    mean_crs_all: float = 0.0
    generated_tokens: int = 0
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _messages(prompt: Sequence[dict]) -> list[BaseMessage]:
    kinds = {"system": SystemMessage, "user": HumanMessage}
    return [kinds[m["role"]](m["content"]) for m in prompt]


def sample_answers(model: Any, row: dict, config: SelfTrainConfig, index: int) -> list[tuple[str, int]]:
    """``config.samples`` answers (text, generated tokens) to ``row``'s prompt, sent together. The
    model must not add its own schema hint (the row's prompt already holds the graph's)."""
    # rows built before intents_per_expert existed were rendered with two intents
    schema = expert_schema(config.n_tags, tuple(row["meta"]["vocabulary"]),
                           row["meta"].get("intents", MAX_INTENTS)).model_json_schema()
    msgs = _messages(row["prompt"])
    out: list[tuple[str, int]] = [("", 0)] * config.samples
    errors: list[BaseException] = []

    def one(k: int) -> None:
        try:
            res = model.invoke(msgs, json_schema=schema, temperature=config.temperature,
                               seed=config.seed + 1000 * index + k)
            out[k] = (str(res.content), int((res.usage_metadata or {}).get("output_tokens", 0)))
        except Exception as e:  # noqa: BLE001 (collected and re-raised below, after every thread ends)
            errors.append(e)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(config.samples)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def reward_of(text: str, row: dict, embed: Callable[[list[str]], np.ndarray], config: RewardConfig) -> Reward:
    meta = row["meta"]
    return score(text, tag_category={normalize(p): c for p, c in meta["phrase_categories"].items() if c},
                 targets=set(meta["target_categories"]), new=set(meta["new_categories"]), embed=embed,
                 recent=keyed(meta.get("recent", [])), config=config)


def self_train_round(rows: Sequence[dict], model: Any, embed: Callable[[list[str]], np.ndarray],
                     config: SelfTrainConfig = SelfTrainConfig(),
                     progress: Callable[[int, int], None] | None = None) -> tuple[list[dict], SelfTrainStats]:
    """The next SFT set from ``rows`` (task rows; others pass through unchanged) and the round's counts."""
    t0 = time.perf_counter()
    st = SelfTrainStats()
    out: list[dict] = []
    kept_crs: list[float] = []
    all_crs: list[float] = []
    tasks = [r for r in rows if r.get("meta", {}).get("stage") == "task"]
    out += [r for r in rows if r.get("meta", {}).get("stage") != "task"]
    for i, row in enumerate(tasks):
        st.rows += 1
        best: tuple[float, str, Reward] | None = None
        for text, n_out in sample_answers(model, row, config, i):
            st.samples += 1
            st.generated_tokens += n_out
            r = reward_of(text, row, embed, config.reward)
            all_crs.append(r.crs)
            if not r.gates["valid"]:
                st.invalid_samples += 1
                continue
            for g in ("pass", "div", "length"):
                st.gate_failures[g] += not r.gates[g]
            if r.crs > 0 and (best is None or r.crs > best[0]):
                best = (r.crs, text, r)
        if best is None:
            st.dropped_no_passing_sample += 1
        else:
            kept_crs.append(best[0])
            out.append({**row, "completion": [{"role": "assistant", "content": best[1]}],
                        "meta": {**row["meta"], "stage": "task", "source": "self_train",
                                 "reward": best[2].as_dict()}})
            st.kept += 1
        if progress:
            progress(i + 1, len(tasks))
    st.mean_crs_kept = round(float(np.mean(kept_crs)), 4) if kept_crs else 0.0
    st.mean_crs_all = round(float(np.mean(all_crs)), 4) if all_crs else 0.0
    st.wall_s = round(time.perf_counter() - t0, 2)
    return out, st


__all__ = ["SelfTrainConfig", "SelfTrainStats", "reward_of", "sample_answers", "self_train_round"]
