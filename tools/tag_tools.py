"""The tag candidate tools as LangChain tools (pydantic argument schemas), for models that call tools.

The graph's prepare step calls the same functions directly and shows their results as evidence; these
wrappers let a capable model in open mode ask for more. Each tool reads a ``TagStats`` built at the run's
date, so nothing at or after it is reachable.
"""
from __future__ import annotations

from langchain_core.tools import StructuredTool
from pydantic import BaseModel, Field

from tools.tag_stats import TagStats, as_dicts, collaborative_new, complements, own_types, seasonal


class ToolArgs(BaseModel):
    user_id: str = Field(description="the household / user id")
    n: int = Field(10, ge=1, le=100, description="how many candidates to return, best first")


_SPECS = (
    ("own_types", own_types, "The user's own product types by purchase count and recency."),
    ("complements", complements, "Product types bought together with the user's top types, ranked by lift; "
                                 "only types the user never bought."),
    ("seasonal", seasonal, "Product types whose share rises in the coming weeks (earlier years, the run-up "
                           "to the same holiday, or the current trend)."),
    ("collaborative_new", collaborative_new, "Categories similar households buy and this one never has "
                                             "(category kNN), named by their top product type."),
)


def make_tag_tools(stats: TagStats) -> list[StructuredTool]:
    """One StructuredTool per candidate tool, bound to ``stats``; each returns a list of
    ``{phrase, category, tool, score, why}`` dicts."""
    def bind(fn):
        return lambda user_id, n=10: as_dicts(fn(stats, user_id, n=n))

    return [StructuredTool.from_function(func=bind(fn), name=name, description=desc, args_schema=ToolArgs)
            for name, fn, desc in _SPECS]
