"""Every schema a model is asked to fill is bounded: each free string has ``maxLength`` (or a pattern
whose repetitions are all bounded) and each array ``maxItems`` in the JSON schema sent to the server. A server's constrained decoding (vLLM's
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
from llm.schemas import for_xgrammar, inline_refs, json_schema_of, pattern_is_bounded

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
        bounded = "maxLength" in node or ("pattern" in node and pattern_is_bounded(node["pattern"]))
        if kind == "string" and not ({"enum", "const"} & node.keys()) and not bounded:
            out.append(f"{path}: string without maxLength or a bounded pattern")
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

    assert unbounded(inline_refs(json_schema_of(Loose))) == ["$.properties.text: string without maxLength or a bounded pattern",
                                                            "$.properties.items: array without maxItems",
                                                            "$.properties.items.items: string without maxLength or a bounded pattern"]


def test_vllm_schemas_keep_a_bounded_pattern_or_else_the_length():
    sd = {"type": "object", "properties": {
        "tag": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 48},
        "word": {"type": "string", "pattern": "^[a-z]{1,8}( [a-z]{1,8}){0,2}$", "minLength": 1, "maxLength": 26},
        "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "items": {"type": "array", "items": {"type": "string", "pattern": "^x", "minLength": 1}}}}
    out = for_xgrammar(sd)
    # unbounded pattern: the length is what keeps decoding finite, so it stays and the pattern goes
    assert "pattern" not in out["properties"]["tag"] and out["properties"]["tag"]["maxLength"] == 48
    # bounded pattern: finite by itself and stronger, so it stays and the lengths go
    assert out["properties"]["word"] == {"type": "string", "pattern": "^[a-z]{1,8}( [a-z]{1,8}){0,2}$"}
    assert out["properties"]["code"]["pattern"] == "^[A-Z]{3}$"  # no length bound: kept
    assert out["properties"]["items"]["items"] == {"type": "string", "minLength": 1}  # "^x" is a prefix: unbounded
    assert sd["properties"]["tag"]["pattern"] == "^[a-z]+$"  # the input is not changed


def test_bounded_patterns():
    from agents.expert import TAG_PATTERN

    assert pattern_is_bounded(TAG_PATTERN) and pattern_is_bounded(r"^[*+]{1,3}\+$") and pattern_is_bounded("^a?b{2}$")
    assert pattern_is_bounded("^(ab|cd){1,2}$")
    for p in (r"^[a-z]+$", "^a*$", "^a{2,}$", r"^\d+$", "^x", "x$", r"^x\$", "^a|b$"):
        assert not pattern_is_bounded(p), p


def test_the_expert_tag_reaches_vllm_with_its_pattern():
    """The open-vocabulary expert's tag keeps its word pattern in what vLLM is sent (it was dropped
    for the length bound, and the served model then wrote tags such as "24.2" that every answer failed on)."""
    from agents.expert import TAG_PATTERN

    tag = inline_refs(for_xgrammar(json_schema_of(expert_schema(3))))["properties"]["tags"]["items"]["properties"]["tag"]
    assert tag["pattern"] == TAG_PATTERN and "maxLength" not in tag and "minLength" not in tag
