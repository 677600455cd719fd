"""Schema plumbing shared by the backends: JSON schema of an output type, a compact schema hint for
the prompt, and the ``with_structured_output(..., include_raw=True)`` runnable.

Design decisions:

* **One output contract.** Every backend's ``with_structured_output`` returns the standard
  langchain-core shape ``{"raw": AIMessage, "parsed": obj | None, "parsing_error": exc | None}``
  (or the parsed object without ``include_raw``), built by :func:`structured_runnable`. The raw
  message carries either JSON text in ``content`` (grammar / ``json_schema`` / ``json_mode`` /
  vLLM ``structured_outputs``) or one tool call (``function_calling``); :func:`parse_structured`
  reads both. Nothing is repaired by hand: output that does not validate is reported as a
  ``parsing_error`` and ``llm.structured`` feeds the error back.
* **The model sees the schema.** Constrained decoding makes the output parse, but the model only
  knows what the fields *mean* if it sees them. With ``schema_hint`` on (the default) a compact
  schema (titles dropped, ``$defs`` inlined where not recursive) is appended to the *last* user
  message, never prepended, so a long shared prompt prefix stays token-identical across calls and
  llama.cpp / vLLM prefix caching still applies. It is appended to the last message rather than
  sent as a trailing system message because several chat templates reject a system message that is
  not first.
* **$defs / $ref.** llama.cpp's JSON-schema→GBNF converter resolves local ``#/$defs/...`` refs
  itself (checked with nested pydantic models), so grammars are built from pydantic's schema as is;
  :func:`inline_refs` is only used to make the prompt hint readable.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import Runnable, RunnableLambda, RunnableMap
from pydantic import BaseModel, ValidationError


class OutputParseError(ValueError):
    """Raw model output that is not valid for the schema (the ``parsing_error`` value)."""


def is_pydantic_class(schema: Any) -> bool:
    return isinstance(schema, type) and issubclass(schema, BaseModel)


def schema_name(schema: Any) -> str:
    if is_pydantic_class(schema):
        return schema.__name__
    if isinstance(schema, dict):
        return str(schema.get("title") or schema.get("name") or "Output")
    raise TypeError(f"unsupported output schema {schema!r}: give a pydantic class or a JSON-schema dict")


def json_schema_of(schema: Any) -> dict[str, Any]:
    """The JSON schema of a pydantic class, or a JSON-schema dict as given."""
    if is_pydantic_class(schema):
        return schema.model_json_schema()
    if isinstance(schema, dict):
        return schema
    raise TypeError(f"unsupported output schema {schema!r}: give a pydantic class or a JSON-schema dict")


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Inline local ``#/$defs/X`` refs; refs that would recurse are left in place (with their defs)."""
    defs = schema.get("$defs") or schema.get("definitions") or {}
    kept: set[str] = set()

    def walk(node: Any, stack: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [walk(x, stack) for x in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(("#/$defs/", "#/definitions/")):
            name = ref.rsplit("/", 1)[-1]
            if name in stack or name not in defs:
                kept.add(name)
                return dict(node)
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return {**walk(defs[name], (*stack, name)), **walk(rest, stack)}
        return {k: walk(v, stack) for k, v in node.items() if k not in ("$defs", "definitions")}

    out = walk(copy.deepcopy(schema), ())
    if kept:
        out["$defs"] = {k: defs[k] for k in kept if k in defs}
    return out


def _drop_titles(node: Any, in_properties: bool = False) -> Any:
    if isinstance(node, list):
        return [_drop_titles(x) for x in node]
    if not isinstance(node, dict):
        return node
    if in_properties:  # keys are property names, which may well be "title"
        return {k: _drop_titles(v) for k, v in node.items()}
    return {k: _drop_titles(v, in_properties=(k == "properties")) for k, v in node.items() if k != "title"}


_CHAR_CLASS = re.compile(r"\\.|\[(?:\\.|[^\]\\])*\]")
_UNBOUNDED = re.compile(r"[*+]|\{\d*,\}")


def pattern_is_bounded(pattern: str) -> bool:
    """True when no match of ``pattern`` is longer than some fixed length: anchored at both ends (a
    JSON-schema pattern is a search, so ``^x`` matches ``xyz...``), no top-level alternation that could
    drop an anchor, and every repetition bounded (``{m,n}``, ``?``; no ``*``, ``+`` or ``{m,}``
    outside a character class or an escape)."""
    core = _CHAR_CLASS.sub("x", pattern)
    if not (core.startswith("^") and core.endswith("$")) or _UNBOUNDED.search(core):
        return False
    depth = 0
    for ch in core:
        depth += (ch == "(") - (ch == ")")
        if ch == "|" and depth == 0:
            return False
    return True


def for_xgrammar(node: Any) -> Any:
    """``node`` with at most one of ``pattern`` and ``minLength`` / ``maxLength`` on each string.

    vLLM's xgrammar backend (0.32) rejects a string schema that has both ("features not supported by
    xgrammar", HTTP 400). A pattern whose repetitions are all bounded is the stronger constraint and
    is finite by itself, so it is kept and the lengths go; otherwise the length bound is what keeps
    constrained decoding finite, so it stays and the pattern goes. Either way every answer is still
    validated against the pydantic schema client-side, and a mismatch is retried like any invalid
    answer."""
    if isinstance(node, list):
        return [for_xgrammar(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: for_xgrammar(v) for k, v in node.items()}
    if "pattern" in out and ("minLength" in out or "maxLength" in out):
        if pattern_is_bounded(out["pattern"]):
            out.pop("minLength", None)
            out.pop("maxLength", None)
        else:
            del out["pattern"]
    return out


#: an ``enum`` longer than this is shown in the schema hint by its first ``HINT_ENUM_SAMPLE`` values
#: only: the grammar (or the server) enforces the whole list, and a prompt that needs the model to
#: see every value lists it once in a part shared between calls (the expert's product types), not in
#: the hint. A few values show the form; more only lengthen every prompt that has the hint
HINT_ENUM_MAX = 16
HINT_ENUM_SAMPLE = 3


def compact_schema(schema: dict[str, Any], *, max_enum: int | None = None) -> dict[str, Any]:
    out = _drop_titles(inline_refs(schema))
    return _sample_enums(out, max_enum) if max_enum is not None else out


def _sample_enums(node: Any, max_enum: int) -> Any:
    if isinstance(node, list):
        return [_sample_enums(x, max_enum) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _sample_enums(v, max_enum) for k, v in node.items()}
    enum = node.get("enum")
    if isinstance(enum, list) and len(enum) > max_enum:
        out["enum"] = enum[:HINT_ENUM_SAMPLE]  # no "... N more" marker: a small model copied it into other fields
    return out


def schema_hint_text(schema: dict[str, Any]) -> str:
    return ("Answer with one JSON object matching this JSON schema:\n"
            + json.dumps(compact_schema(schema, max_enum=HINT_ENUM_MAX), ensure_ascii=False, separators=(",", ":")))


#: where a template wants the schema hint: the first message holding this text gets the hint in its
#: place. Calls that share a long prefix and differ only after it (the K experts) put it before the
#: part that differs, so the hint is evaluated once for all of them. Without it the hint goes last.
SCHEMA_HINT_MARKER = "[[output schema]]"


def with_schema_hint(messages: Sequence[BaseMessage], hint: str | None) -> list[BaseMessage]:
    """Put ``hint`` where a message holds :data:`SCHEMA_HINT_MARKER`, else append it to the last user
    message (or add one), leaving every earlier token alone. ``hint=None``: only the marker goes."""
    msgs = list(messages)
    for i, m in enumerate(msgs):
        if isinstance(m.content, str) and SCHEMA_HINT_MARKER in m.content:
            if hint:
                content = m.content.replace(SCHEMA_HINT_MARKER, hint, 1)
            else:  # the marker goes with its line break, so no empty line is left where it stood
                line = SCHEMA_HINT_MARKER + "\n"
                content = m.content.replace(line if line in m.content else SCHEMA_HINT_MARKER, "", 1)
            msgs[i] = m.model_copy(update={"content": content})
            return msgs
    if hint is None:
        return msgs
    if msgs and isinstance(msgs[-1], HumanMessage) and isinstance(msgs[-1].content, str):
        last = msgs[-1]
        msgs[-1] = last.model_copy(update={"content": f"{last.content}\n\n{hint}"})
    else:
        msgs.append(HumanMessage(content=hint))
    return msgs


def message_text(content: Any) -> str:
    """Plain text of a message content (string or a list of content blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
        return "".join(parts)
    return "" if content is None else str(content)


def raw_output_text(msg: Any) -> str:
    """What the model actually produced: tool-call arguments if it made a call, else the text."""
    if isinstance(msg, AIMessage):
        if msg.tool_calls:
            return json.dumps(msg.tool_calls[0].get("args", {}), ensure_ascii=False)
        if msg.invalid_tool_calls:
            return str(msg.invalid_tool_calls[0].get("args") or "")
        return message_text(msg.content)
    return "" if msg is None else str(msg)


def was_truncated(msg: Any) -> bool:
    """The answer stopped at ``max_tokens`` (``finish_reason == "length"``)."""
    meta = getattr(msg, "response_metadata", None) or {}
    return meta.get("finish_reason") == "length"


def parse_structured(msg: AIMessage, schema: Any) -> tuple[Any, Exception | None]:
    """Validate a raw message against ``schema``: ``(parsed, None)`` or ``(None, error)``."""
    suffix = " (output was cut off at max_tokens)" if was_truncated(msg) else ""
    try:
        if msg.tool_calls:
            data: Any = msg.tool_calls[0].get("args", {})
        elif msg.invalid_tool_calls:
            bad = msg.invalid_tool_calls[0]
            return None, OutputParseError(
                f"tool call arguments are not valid JSON{suffix}: {bad.get('error') or ''} {str(bad.get('args'))[:200]!r}")
        else:
            text = message_text(msg.content).strip()
            if not text:
                return None, OutputParseError(f"empty output{suffix}")
            data = json.loads(text)
    except json.JSONDecodeError as e:
        return None, OutputParseError(f"output is not valid JSON{suffix}: {e}")
    if is_pydantic_class(schema):
        try:
            return schema.model_validate(data), None
        except ValidationError as e:
            return None, OutputParseError(f"{e}{suffix}")
    if not isinstance(data, dict):
        return None, OutputParseError(f"expected a JSON object, got {type(data).__name__}{suffix}")
    return data, None


def structured_runnable(llm: Runnable, schema: Any, *, include_raw: bool) -> Runnable:
    """``llm`` (already bound to produce structured output) followed by the standard parser."""

    def finish(d: dict[str, Any]) -> dict[str, Any]:
        parsed, err = parse_structured(d["raw"], schema)
        return {"raw": d["raw"], "parsed": parsed, "parsing_error": err}

    def parse_or_raise(msg: AIMessage) -> Any:
        parsed, err = parse_structured(msg, schema)
        if err is not None:
            raise err
        return parsed

    if include_raw:
        return RunnableMap(raw=llm) | RunnableLambda(finish, name="parse_structured")
    return llm | RunnableLambda(parse_or_raise, name="parse_structured")
