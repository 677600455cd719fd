"""The ``retrieve_items`` LangChain tool: its argument schema and its compact output, on a small real
retriever (the same slice and cache location as tests/test_retrieval.py, so it is built once)."""

from __future__ import annotations

from datetime import datetime

import pytest
from pydantic import ValidationError

from behavior.adapters import load_dataset_cached
from retrieval.service import load_or_build_retriever
from retrieval.settings import RetrievalSettings
from retrieval.text_encoder import TextEncoder
from tools.retrieval import MAX_K, RetrieveItemsArgs, make_retrieve_tool

SMALL = RetrievalSettings(max_users=30, min_user_events=50, catalogue="seen", epochs=3, batch_size=256, dim=64,
                          hidden=128, id_dim=32, cutoff=datetime(2017, 10, 1), seed=7)


@pytest.fixture(scope="module")
def retriever(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    return load_or_build_retriever(load_dataset_cached("completejourney"), SMALL, progress=False,
                                   root=base / "retrieval-cache", encoder=TextEncoder(cache_dir=base / "text-cache"))


@pytest.fixture(scope="module")
def tool(retriever):
    return make_retrieve_tool(retriever)


def test_tool_schema(tool):
    assert tool.name == "retrieve_items"
    assert tool.args_schema is RetrieveItemsArgs
    schema = RetrieveItemsArgs.model_json_schema()
    assert set(schema["properties"]) == {"user_id", "tags", "k"}
    assert schema["required"] == ["user_id", "tags"]
    assert schema["properties"]["k"]["minimum"] == 1 and schema["properties"]["k"]["maximum"] == MAX_K
    assert schema["properties"]["tags"]["minItems"] == 1
    assert "intent tags" in tool.description or "tags" in tool.description


def test_tool_returns_compact_dicts(tool, retriever):
    u = retriever.user_ids[0]
    out = tool.invoke({"user_id": u, "tags": ["premium ice cream", "frozen pizza"], "k": 6})
    assert set(out) == {"user_known", "flags", "items"}
    assert out["user_known"] is True and len(out["items"]) == 6
    for it in out["items"]:
        assert set(it) == {"item_id", "title", "score", "tags", "sources", "channel"}
        assert isinstance(it["score"], float) and round(it["score"], 4) == it["score"]
        assert (it["channel"], set(it["sources"]) <= {"user", "tag"}) in {("discovery", True), ("repeat", False)}
        assert it["channel"] != "repeat" or it["sources"] == ["repeat"]
    direct = retriever.search(u, ["premium ice cream", "frozen pizza"], 6)
    assert [it["item_id"] for it in out["items"]] == [c.item_id for c in direct.candidates]


def test_tool_unknown_user_and_bad_input(tool):
    out = tool.invoke({"user_id": "nobody", "tags": ["frozen pizza"], "k": 3})
    assert out["user_known"] is False and "tag_channel_only" in out["flags"]
    assert all(it["sources"] == ["tag"] for it in out["items"])
    # blank tags reach the retriever and come back as an error message, not an exception
    err = tool.invoke({"user_id": "nobody", "tags": ["   "], "k": 3})
    assert isinstance(err, str) and "at least one non-blank tag" in err
    with pytest.raises(ValidationError):
        tool.invoke({"user_id": "nobody", "tags": [], "k": 3})
    with pytest.raises(ValidationError):
        tool.invoke({"user_id": "nobody", "tags": ["x"], "k": 0})
