"""Persona expert (RecGPT-V2): one per persona, fanned out with ``Send``. Writes intents (interest +
reason) and tags in "modifier + core word" form, each tag tied to one of those intents (whose reason
it carries).

Tag modes (``Context.tag_vocabulary``): ``open`` lets the model write any 2–4-word tag (the paper;
for capable models); ``catalogue`` constrains tags to product-type phrases of the shop's catalogue
near the user's categories (``graphs.prepare``), an enum the grammar enforces. The prompt lists
them before the persona, so the K experts of a user share that part of the prompt in the KV cache
(the schema hint shows only a sample of a long enum; ``llm.schemas.HINT_ENUM_MAX``). Small local models
(the embedded 135M default) write junk tags in open mode ("Mike ia", "intent"), so the local
backend defaults to ``catalogue``: the model still chooses which product types serve which intent.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, Field, create_model

from agents.common import call_agent
from agents.context import Context

#: the most intents one expert answer may hold (``Context.intents_per_expert`` chooses 1 or 2)
MAX_INTENTS = 2


class Intent(BaseModel):
    # bounds kept short: every character the grammar allows is one a looping small model may fill
    interest: str = Field(min_length=1, max_length=40)
    reason: str = Field(default="", max_length=48)


#: the longest word a tag may have: the catalogue's longest product-type word fits
TAG_WORD_CHARS = 21
_TAG_WORD = rf"[A-Za-z][A-Za-z'-]{{0,{TAG_WORD_CHARS - 1}}}"
#: "modifier + core word": 2 to 4 plain words. Grammar-constrained backends cannot emit anything else.
#: Every repetition is bounded, so the pattern alone keeps constrained decoding finite: a server that
#: takes either a pattern or a length on one string (vLLM's xgrammar) gets the pattern.
TAG_PATTERN = rf"^{_TAG_WORD}( {_TAG_WORD}){{1,3}}$"
#: the longest string ``TAG_PATTERN`` matches (4 words and 3 spaces)
TAG_MAX_CHARS = 4 * TAG_WORD_CHARS + 3


class TagChoice(BaseModel):
    """A tag of an expert with one intent: it serves that intent, so it carries no index."""
    tag: str = Field(min_length=3, max_length=TAG_MAX_CHARS, pattern=TAG_PATTERN, description="modifier + core word, 2 to 4 words")


class TagProposal(TagChoice):
    #: which of the expert's intents the tag serves, by position (0 = the first): one token, where a
    #: copied text was up to 40 (a 135M model filled it with "1. 1. 1. …"). The tag carries that
    #: intent's interest and reason.
    intent: Literal[tuple(range(MAX_INTENTS))] = 0  # an enum, which the grammar enforces (it ignores ge/le)


@lru_cache(maxsize=64)
def expert_schema(n_tags: int, vocabulary: tuple[str, ...] | None = None,
                  n_intents: int = MAX_INTENTS) -> type[BaseModel]:
    """``vocabulary`` (the ``catalogue`` tag mode): tags must be one of these catalogue phrases, so a
    grammar-constrained model can only name product types the shop sells. ``n_intents`` (1 or
    ``MAX_INTENTS``): with one intent the tags carry no intent index (``TagChoice``), which is one
    field fewer per tag to decode."""
    if not 1 <= n_intents <= MAX_INTENTS:
        raise ValueError(f"intents_per_expert must be 1 to {MAX_INTENTS}, got {n_intents}")
    proposal = TagProposal if n_intents > 1 else TagChoice
    if vocabulary:
        proposal = create_model(proposal.__name__, __base__=proposal,
                                # no description: a small model copies it into other fields
                                tag=(Literal[vocabulary], Field()))
    return create_model(
        "ExpertOutput",
        intents=(list[Intent], Field(min_length=1, max_length=n_intents)),
        tags=(list[proposal], Field(min_length=1, max_length=n_tags)),
    )


@lru_cache(maxsize=64)
def intents_of(schema: type[BaseModel]) -> int:
    """The most intents an ``expert_schema`` answer holds (its tags carry an intent index when > 1)."""
    return schema.model_json_schema()["properties"]["intents"]["maxItems"]


def expert_variables(ctx: Context, shared_context: str, persona: dict, feedback: str = "",
                     vocabulary: tuple[str, ...] | None = None) -> dict:
    """The expert template's variables for one persona: what the graph renders, and what the learning
    loop's dataset renders (``learning.dataset``), from one place."""
    return {"shared_context": shared_context, "vocabulary": list(vocabulary or ()), "persona_name": persona["name"],
            "persona_focus": persona["focus"], "persona_evidence": persona.get("evidence", ""),
            "n_tags": ctx.tags_per_expert, "n_intents": ctx.intents_per_expert, "feedback": feedback}


def propose(ctx: Context, shared_context: str, persona: dict, feedback: str = "",
            vocabulary: tuple[str, ...] | None = None) -> tuple[BaseModel, dict]:
    return call_agent(
        ctx, node="expert", role="expert", template="expert", schema=expert_schema(ctx.tags_per_expert, vocabulary, ctx.intents_per_expert),
        subject=persona["name"], **expert_variables(ctx, shared_context, persona, feedback, vocabulary),
    )
