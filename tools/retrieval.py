"""The LangChain tool ``retrieve_items(user_id, tags, k)`` over a :class:`retrieval.service.Retriever`.

The graph binds this tool (or calls it directly). Arguments are validated by a pydantic schema
(k between 1 and ``max_k``; tags a non-empty list). It returns compact, JSON-ready dicts so results sit
in graph state and checkpoints without embeddings: ``{"user_known", "flags", "items": [{"item_id",
"title", "score", "tags", "sources", "channel"}, ...]}``, scores rounded to 4 decimals; ``channel`` is
"repeat" (bought before), "discovery" (never bought) or "fused" (repeat channel off). Input the retriever rejects (e.g.
blank tags) comes back as the string ``"error: ..."`` instead of raising (``handle_tool_error``), so an
agent can correct itself; arguments that fail the schema raise pydantic's ValidationError as usual.
"""

from __future__ import annotations

from langchain_core.tools import StructuredTool, ToolException
from pydantic import BaseModel, Field

from core.errors import IntentRecError
from retrieval.service import Retriever, SearchResult

MAX_K = 200


class RetrieveItemsArgs(BaseModel):
    user_id: str = Field(description="The user to recommend for (opaque id).")
    tags: list[str] = Field(min_length=1, description="Intent tags in 'modifier + core word' form, "
                            "e.g. 'organic baby food'.")
    k: int = Field(20, ge=1, le=MAX_K, description="How many items to return.")


def compact(result: SearchResult) -> dict:
    return {
        "user_known": result.user_known,
        "flags": list(result.flags),
        "items": [{"item_id": c.item_id, "title": c.title, "score": round(c.score, 4), "tags": list(c.tags),
                   "sources": list(c.sources), "channel": c.channel} for c in result.candidates],
    }


def make_retrieve_tool(retriever: Retriever, *, beta: float | None = None,
                       per_tag_quota: int | None = None) -> StructuredTool:
    def retrieve_items(user_id: str, tags: list[str], k: int = 20) -> dict:
        try:
            return compact(retriever.search(user_id, tags, k, beta=beta, per_tag_quota=per_tag_quota))
        except IntentRecError as e:
            raise ToolException(str(e)) from e

    return StructuredTool.from_function(
        func=retrieve_items,
        name="retrieve_items",
        description=("Retrieve catalogue items for a user and a list of intent tags: items the user buys again "
                     "and new items that fuse the user's collaborative signal with the tags; each item says "
                     "which tag(s) and channel(s) found it."),
        args_schema=RetrieveItemsArgs,
        handle_tool_error=lambda e: f"error: {e}",
    )
