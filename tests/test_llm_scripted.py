"""The scripted chat model: queue, rules, default, structured output, tools, call counting, latency."""

from __future__ import annotations

import asyncio
import time

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from pydantic import BaseModel

from llm.scripted import ScriptedChatModel, ScriptedExhausted, by_schema


class Tag(BaseModel):
    tag: str
    score: float


class Persona(BaseModel):
    name: str


def test_queue_is_consumed_in_order_then_default():
    m = ScriptedChatModel(responses=["first", {"a": 1}], default="fallback")
    assert m.invoke("x").content == "first"
    assert m.invoke("x").content == '{"a": 1}'
    assert m.invoke("x").content == "fallback"
    assert m.invoke("x").content == "fallback"
    assert len(m.calls) == 4


def test_exhausted_without_default_raises():
    m = ScriptedChatModel(responses=["only"])
    m.invoke("x")
    with pytest.raises(ScriptedExhausted, match="no response"):
        m.invoke("x")


def test_rules_win_over_queue_and_see_messages():
    def shout(messages, schema):
        return "LOUD" if "shout" in messages[-1].content else None

    m = ScriptedChatModel(rules=[shout], responses=["quiet"])
    assert m.invoke([HumanMessage("please shout")]).content == "LOUD"
    assert m.invoke([HumanMessage("whisper")]).content == "quiet"
    assert [c.text for c in m.calls] == ["please shout", "whisper"]


def test_structured_output_by_schema_and_call_counting():
    m = ScriptedChatModel(rules=[by_schema(Tag, Tag(tag="organic baby food", score=0.9)),
                                 by_schema("Persona", lambda msgs: {"name": f"n{len(msgs)}"})])
    tag = m.with_structured_output(Tag).invoke([SystemMessage("s"), HumanMessage("h")])
    assert tag == Tag(tag="organic baby food", score=0.9)
    p = m.with_structured_output(Persona).invoke([HumanMessage("a"), HumanMessage("b"), HumanMessage("c")])
    assert p.name == "n3"
    assert len(m.calls_for(Tag)) == 1
    assert len(m.calls_for("Persona")) == 1
    assert m.calls[0].schema == "Tag"


def test_structured_output_include_raw_reports_parsing_error():
    m = ScriptedChatModel(responses=['{"tag": "x"}', '{"tag": "x", "score": 1}'])
    out = m.with_structured_output(Tag, include_raw=True).invoke("q")
    assert out["parsed"] is None
    assert out["parsing_error"] is not None and "score" in str(out["parsing_error"])
    assert isinstance(out["raw"], AIMessage) and out["raw"].content == '{"tag": "x"}'
    ok = m.with_structured_output(Tag, include_raw=True).invoke("q")
    assert ok["parsed"] == Tag(tag="x", score=1.0) and ok["parsing_error"] is None


def test_usage_metadata_counts_words():
    m = ScriptedChatModel(default="one two three")
    msg = m.invoke([HumanMessage("a b"), HumanMessage("c")])
    assert msg.usage_metadata["input_tokens"] == 3
    assert msg.usage_metadata["output_tokens"] == 3


def test_bind_tools_is_accepted_and_ignored():
    @tool
    def lookup(item_id: str) -> str:
        """Look an item up."""
        return item_id

    m = ScriptedChatModel(default="done")
    assert m.bind_tools([lookup]).invoke("go").content == "done"
    assert len(m.calls) == 1


def test_latency_sync_and_async(monkeypatch):
    import llm.scripted as scripted

    m = ScriptedChatModel(default="x", latency_s=0.05)
    t0 = time.perf_counter()
    m.invoke("a")
    assert time.perf_counter() - t0 >= 0.05  # a lower bound only: sleep never returns early

    # async calls wait concurrently: count the sleeps in flight instead of timing them
    real_sleep, state = asyncio.sleep, {"now": 0, "peak": 0, "delays": []}

    async def counting_sleep(delay):
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        state["delays"].append(delay)
        await real_sleep(0.01)
        state["now"] -= 1

    monkeypatch.setattr(scripted.asyncio, "sleep", counting_sleep)

    async def many():
        await asyncio.gather(*(m.ainvoke("b") for _ in range(5)))

    asyncio.run(many())
    assert state["peak"] == 5 and state["delays"] == [0.05] * 5  # all five in flight at once, not in series
    assert len(m.calls) == 6


def test_with_structured_output_rejects_dict_schema():
    with pytest.raises(TypeError, match="pydantic"):
        ScriptedChatModel().with_structured_output({"type": "object"})
