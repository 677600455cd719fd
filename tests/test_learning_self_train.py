"""One self-training round (learning/self_train.py): the best sample whose constrained reward is
positive becomes the row's target, rows without one are dropped and counted, other rows pass through;
with the embedded model, a prompt's samples are decoded together and are valid under the grammar."""

from __future__ import annotations

import threading

import pytest
from langchain_core.messages import AIMessage

from learning.reward import RewardConfig
from learning.self_train import SelfTrainConfig, self_train_round
from llm.local import LocalChatModel
from tests.learning_support import answer, embed, row


class Canned:
    """Answers by seed: sample k of row i gets ``texts[k]``."""

    def __init__(self, texts):
        self.texts = texts
        self.lock = threading.Lock()

    def invoke(self, messages, *, json_schema, temperature, seed):
        return AIMessage(content=self.texts[(seed - 42) % 1000], usage_metadata={"input_tokens": 1, "output_tokens": 7,
                                                                         "total_tokens": 8})


def test_the_best_passing_sample_becomes_the_target():
    texts = [answer("white bread", "green tea", "green tea", "green tea", "green tea"),  # repeats: fails the rules gate
             answer("white bread", "potato chips", "green tea", "whole milk", "tomato salsa"),  # acc 1/3
             answer("frozen pizza", "green tea", "whole milk", "potato chips", "tomato salsa"),  # acc 3/3
             "not json"]
    other = {"prompt": [], "completion": [], "meta": {"stage": "curriculum"}}
    out, st = self_train_round([row(), other], Canned(texts), embed, SelfTrainConfig(samples=4))
    assert st.rows == 1 and st.samples == 4 and st.kept == 1 and st.invalid_samples == 1
    assert st.gate_failures["pass"] == 1 and st.generated_tokens == 28
    assert out[0] is other  # non-task rows pass through first
    kept = out[1]
    assert kept["completion"][0]["content"] == texts[2] and kept["meta"]["source"] == "self_train"
    assert kept["meta"]["reward"]["crs"] == pytest.approx(1.0) and st.mean_crs_kept == pytest.approx(1.0)


def test_rows_without_a_passing_sample_are_dropped_and_counted():
    texts = [answer("white bread", "green tea")] * 2  # too short for the length gate
    out, st = self_train_round([row()], Canned(texts), embed, SelfTrainConfig(samples=2))
    assert out == [] and st.dropped_no_passing_sample == 1 and st.gate_failures["length"] == 2


@pytest.mark.llm
def test_samples_of_one_prompt_are_decoded_together_and_valid():
    model = LocalChatModel(n_ctx=4096, max_tokens=512, schema_hint=False)
    batcher = model.loaded().batcher(model.parallel_sequences)
    before = len(batcher.round_sizes)
    out, st = self_train_round([row()], model, embed, SelfTrainConfig(samples=3, reward=RewardConfig(min_tags=1)))
    assert st.samples == 3 and st.invalid_samples == 0  # every sample parses: the grammar holds
    assert 3 in batcher.round_sizes[before:]  # the three samples went out as one round
    assert st.kept + st.dropped_no_passing_sample == 1
