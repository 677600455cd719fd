"""The structured-output chains a model keeps (llm/structured_cache.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from langchain_core.messages import HumanMessage
from pydantic import BaseModel, create_model

from llm.scripted import ScriptedChatModel
from llm.structured import structured_call
from llm.structured_cache import StructuredRunnables, structured_runnable_for


class Need(BaseModel):
    need: str


def _model() -> ScriptedChatModel:
    return ScriptedChatModel(rules=[lambda msgs, schema: {"need": msgs[-1].content}])


def test_a_model_builds_a_schema_chain_once_and_every_call_still_answers():
    m = _model()
    first = structured_runnable_for(m, Need)
    assert structured_runnable_for(m, Need) is first and len(m._structured_chains) == 1
    answers = [structured_call(m, Need, [HumanMessage(f"tea {i}")]).value.need for i in range(5)]
    assert answers == [f"tea {i}" for i in range(5)]  # the kept chain carries no call's state
    assert len(m._structured_chains) == 1 and len(m.calls) == 5
    with ThreadPoolExecutor(4) as pool:  # one chain, many threads
        got = list(pool.map(lambda i: structured_call(m, Need, [HumanMessage(str(i))]).value.need, range(40)))
    assert got == [str(i) for i in range(40)]


def test_the_oldest_schema_is_dropped_at_the_size_limit():
    m = _model()
    m._structured_chains = StructuredRunnables(size=3)
    schemas = [create_model(f"S{i}", need=(str, ...)) for i in range(5)]
    chains = [structured_runnable_for(m, s) for s in schemas]
    assert len(m._structured_chains) == 3
    assert structured_runnable_for(m, schemas[4]) is chains[4]  # kept
    assert structured_runnable_for(m, schemas[0]) is not chains[0]  # dropped, built again


def test_a_model_without_the_cache_is_asked_every_time():
    class Plain:
        asked = 0

        def with_structured_output(self, schema, include_raw=False):
            Plain.asked += 1
            return (schema, include_raw, Plain.asked)

    p = Plain()
    assert structured_runnable_for(p, Need) == (Need, True, 1)
    assert structured_runnable_for(p, Need) == (Need, True, 2)


def test_a_schema_the_model_refuses_is_not_kept():
    m = _model()
    try:
        structured_runnable_for(m, dict)  # the scripted model takes pydantic schemas only
    except TypeError:
        pass
    else:
        raise AssertionError("expected TypeError")
    assert len(m._structured_chains) == 0
