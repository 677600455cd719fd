"""structured_call: retry with the validation error fed back, then a typed error with every raw output."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from pydantic import BaseModel, Field

from llm.errors import LLMError as LLMErrorHome
from llm.schemas import compact_schema, inline_refs, parse_structured, with_schema_hint
from llm.scripted import ScriptedChatModel
from llm.structured import LLMError, StructuredOutputError, astructured_call, structured_call


class Intent(BaseModel):
    intent: str
    tags: list[str] = Field(min_length=1)


MSGS = [SystemMessage("shared context"), HumanMessage("what does the user want?")]


def test_valid_first_time_records_tokens_and_attempts():
    m = ScriptedChatModel(responses=[{"intent": "baby care", "tags": ["organic baby food"]}], model_name="scr-1")
    res = structured_call(m, Intent, MSGS)
    assert res.value == Intent(intent="baby care", tags=["organic baby food"])
    rec = res.record
    assert rec.model_id == "scr-1" and rec.schema == "Intent" and rec.attempts == 1
    assert rec.prompt_tokens == 7 and rec.completion_tokens > 0
    assert rec.raw.startswith('{"intent"') and rec.errors == []
    assert rec.as_dict()["cached_tokens"] == 0


def test_retry_feeds_the_validation_error_back():
    m = ScriptedChatModel(responses=['{"intent": "x", "tags": []}', '{"intent": "x", "tags": ["warm socks"]}'])
    res = structured_call(m, Intent, MSGS, max_attempts=3)
    assert res.value.tags == ["warm socks"]
    assert res.record.attempts == 2
    assert len(res.record.errors) == 1 and "tags" in res.record.errors[0]
    second = m.calls[1].messages
    assert len(second) == len(MSGS) + 2
    assert isinstance(second[-2], AIMessage) and second[-2].content == '{"intent": "x", "tags": []}'
    assert "not valid" in second[-1].content and "tags" in second[-1].content
    assert second[: len(MSGS)] == MSGS  # the shared prefix is untouched


@pytest.mark.parametrize("garbage", ["not json at all", '{"intent": "trunc', ""])
def test_invalid_or_truncated_output_gives_typed_error_with_all_raw(garbage):
    m = ScriptedChatModel(default=garbage, model_name="scr-bad")
    with pytest.raises(StructuredOutputError) as ei:
        structured_call(m, Intent, MSGS, max_attempts=3)
    e = ei.value
    assert isinstance(e, LLMError) and isinstance(e, LLMErrorHome)
    assert e.model == "scr-bad" and e.attempts == 3 and e.schema == "Intent"
    assert e.raw == [garbage] * 3
    assert len(e.errors) == 3
    assert "scr-bad" in str(e) and "3 attempt" in str(e)
    assert len(m.calls) == 3


def test_async_twin():
    m = ScriptedChatModel(responses=["nope", {"intent": "a", "tags": ["b c"]}])
    res = asyncio.run(astructured_call(m, Intent, MSGS))
    assert res.value.intent == "a" and res.record.attempts == 2


def test_parse_structured_reads_tool_calls_and_flags_truncation():
    call = AIMessage(content="", tool_calls=[{"name": "Intent", "args": {"intent": "i", "tags": ["t u"]},
                                              "id": "c1", "type": "tool_call"}])
    assert parse_structured(call, Intent) == (Intent(intent="i", tags=["t u"]), None)
    cut = AIMessage(content='{"intent": "i", "ta', response_metadata={"finish_reason": "length"})
    parsed, err = parse_structured(cut, Intent)
    assert parsed is None and "cut off at max_tokens" in str(err)
    bad = AIMessage(content="", invalid_tool_calls=[{"name": "Intent", "args": '{"intent', "id": "c",
                                                     "error": "bad", "type": "invalid_tool_call"}])
    parsed, err = parse_structured(bad, Intent)
    assert parsed is None and "not valid JSON" in str(err)


class Leaf(BaseModel):
    title: str


class Tree(BaseModel):
    leaf: Leaf
    children: list[Tree] = []


def test_inline_refs_keeps_recursion_and_compact_drops_titles():
    s = Tree.model_json_schema()
    inl = inline_refs(s)
    assert inl["properties"]["leaf"]["properties"]["title"]["type"] == "string"  # Leaf inlined
    assert "Tree" in inl["$defs"]  # recursive ref kept
    c = compact_schema(s)
    assert "title" not in c
    assert "title" in c["properties"]["leaf"]["properties"]  # a property named title survives


def test_schema_hint_goes_after_the_shared_prefix():
    msgs = with_schema_hint(MSGS, "HINT")
    assert msgs[0] == MSGS[0]
    assert msgs[-1].content.endswith("HINT") and msgs[-1].content.startswith(MSGS[-1].content)
    msgs2 = with_schema_hint([SystemMessage("only system")], "HINT")
    assert len(msgs2) == 2 and msgs2[-1].content == "HINT"
    assert with_schema_hint(MSGS, None) == list(MSGS)


def test_a_template_marker_puts_the_schema_hint_before_the_part_that_differs():
    from llm.schemas import SCHEMA_HINT_MARKER

    msgs = [SystemMessage("shared"), HumanMessage(f"rules\n{SCHEMA_HINT_MARKER}\nPERSONA: a\nAnswer.")]
    placed = with_schema_hint(msgs, "HINT")
    assert [m.content for m in placed] == ["shared", "rules\nHINT\nPERSONA: a\nAnswer."]
    # no hint (the backend's hint is off): the marker and its line break go, nothing else changes
    assert [m.content for m in with_schema_hint(msgs, None)] == ["shared", "rules\nPERSONA: a\nAnswer."]
    assert msgs[1].content.count(SCHEMA_HINT_MARKER) == 1  # the input messages are not changed


def test_a_model_that_does_not_place_the_hint_never_sees_the_marker():
    from llm.schemas import SCHEMA_HINT_MARKER

    class PlainChatModel(ScriptedChatModel):  # any LangChain chat model: no handles_schema_marker of its own
        handles_schema_marker = False

    msgs = [SystemMessage("shared"), HumanMessage(f"rules\n{SCHEMA_HINT_MARKER}\nPERSONA: a")]
    plain = PlainChatModel(responses=[{"intent": "baby care", "tags": ["organic baby food"]}])
    structured_call(plain, Intent, msgs)
    assert [m.content for m in plain.calls[0].messages] == ["shared", "rules\nPERSONA: a"]
    kept = ScriptedChatModel(responses=[{"intent": "baby care", "tags": ["organic baby food"]}])
    structured_call(kept, Intent, msgs)  # the backends that place the hint get the marker where it stands
    assert kept.calls[0].messages[1].content == msgs[1].content


def test_schema_hint_shows_a_sample_of_a_long_enum():
    """The grammar enforces the whole enum; the hint at the end of every prompt shows its first values
    only, so a long list is not paid again in every call's uncached suffix."""
    import json as _json

    from llm.schemas import HINT_ENUM_MAX, HINT_ENUM_SAMPLE, schema_hint_text

    values = [f"product type {i}" for i in range(40)]
    schema = {"type": "object", "properties": {"tag": {"enum": values}, "mode": {"enum": ["a", "b"]}}}
    hint = _json.loads(schema_hint_text(schema).split("\n", 1)[1])
    assert hint["properties"]["tag"]["enum"] == values[:HINT_ENUM_SAMPLE] == values[:3]
    assert hint["properties"]["mode"]["enum"] == ["a", "b"]  # short enums are shown whole
    assert len(values) > HINT_ENUM_MAX
    assert compact_schema(schema)["properties"]["tag"]["enum"] == values  # the schema itself is untouched
