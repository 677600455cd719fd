"""Every schema a model is asked to fill is bounded: each free string has ``maxLength`` and each
array ``maxItems`` in the JSON schema sent to the server. A server's constrained decoding (vLLM's
``structured_outputs``, llama.cpp's grammar) then always reaches the end of the object; without the
bounds a small model can keep a string or a list going until ``max_tokens``."""

from __future__ import annotations

from typing import Any

import pytest

from agents.arbiter import arbiter_schema
from agents.expert import expert_schema
from agents.explainer import Explanation, StyleGuideline
from agents.planner import planner_schema
from judges.llm_judges import DimensionJudgement, joint_schema
from llm.check import ShoppingIntent
from llm.schemas import inline_refs, json_schema_of

SCHEMAS = {
    "planner": planner_schema(3), "expert_open": expert_schema(6), "expert_catalogue": expert_schema(6, ("milk", "eggs")),
    "arbiter": arbiter_schema(6, 12), "style": StyleGuideline, "explanation": Explanation,
    "judge_tags": joint_schema("tag"), "judge_explanations": joint_schema("explanation"),
    "judge_dimension": DimensionJudgement, "llm_check": ShoppingIntent,
}


def unbounded(node: Any, path: str = "$") -> list[str]:
    out: list[str] = []
    if isinstance(node, dict):
        kind = node.get("type")
        if kind == "string" and not ({"enum", "const"} & node.keys()) and "maxLength" not in node:
            out.append(f"{path}: string without maxLength")
        if kind == "array" and "maxItems" not in node:
            out.append(f"{path}: array without maxItems")
        for k, v in node.items():
            out += unbounded(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += unbounded(v, f"{path}[{i}]")
    return out


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_string_and_array_is_bounded(name):
    schema = inline_refs(json_schema_of(SCHEMAS[name]))
    assert unbounded(schema) == []


def test_the_walker_finds_an_unbounded_field():
    from pydantic import BaseModel

    class Loose(BaseModel):
        text: str
        items: list[str]

    assert unbounded(inline_refs(json_schema_of(Loose))) == ["$.properties.text: string without maxLength",
                                                            "$.properties.items: array without maxItems",
                                                            "$.properties.items.items: string without maxLength"]


def test_vllm_schemas_drop_a_pattern_only_where_a_length_bound_sits_beside_it():
    from llm.schemas import without_pattern_and_length

    sd = {"type": "object", "properties": {
        "tag": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 48},
        "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "items": {"type": "array", "items": {"type": "string", "pattern": "^x", "minLength": 1}}}}
    out = without_pattern_and_length(sd)
    assert "pattern" not in out["properties"]["tag"] and out["properties"]["tag"]["maxLength"] == 48
    assert out["properties"]["code"]["pattern"] == "^[A-Z]{3}$"  # no length bound: kept
    assert "pattern" not in out["properties"]["items"]["items"] and sd["properties"]["tag"]["pattern"] == "^[a-z]+$"
