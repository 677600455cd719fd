"""Global Planner (RecGPT-V2): reads the shared context C and splits the user into K personas.

The output schema is built per K (``planner_schema(k)``) with ``min_length = max_length = K``, so a
grammar-constrained backend cannot return a different number of personas and the fan-out is always
exactly K experts.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import BaseModel, Field, create_model

from agents.common import call_agent
from agents.context import Context


class Persona(BaseModel):
    # no field descriptions: they reach the grammar's path, and a small model copies them as values.
    # Short bounds: a small model that copies dates from the HISTORY fills every allowed character
    # (one token per digit), and K personas at the old 400 characters each ran past max_tokens.
    name: str = Field(min_length=1, max_length=30)
    focus: str = Field(min_length=1, max_length=80)
    evidence: str = Field(default="", max_length=80)


@lru_cache(maxsize=16)
def planner_schema(k: int) -> type[BaseModel]:
    return create_model(
        "PlannerOutput",
        personas=(list[Persona], Field(min_length=k, max_length=k)),
    )


def plan(ctx: Context, shared_context: str, feedback: str = "") -> tuple[list[Persona], dict]:
    """``feedback``: why an earlier answer was rejected (passed when the template declares it, so an
    override template written before the variable existed still renders)."""
    extra = {"feedback": feedback} if "feedback" in ctx.prompts.get("planner").variables else {}
    out, stat = call_agent(ctx, node="planner", role="planner", template="planner",
                           schema=planner_schema(ctx.n_personas), shared_context=shared_context,
                           k=ctx.n_personas, **extra)
    personas = _dedupe(list(out.personas))
    return personas, stat


def _dedupe(personas: list[Persona]) -> list[Persona]:
    """Keep K personas but make their names unique (expert node ids and traces key on them)."""
    seen: dict[str, int] = {}
    out = []
    for p in personas:
        name = p.name.strip() or "persona"
        if name.lower() in seen:
            seen[name.lower()] += 1
            name = f"{name} {seen[name.lower()]}"
        else:
            seen[name.lower()] = 1
        out.append(p.model_copy(update={"name": name}))
    return out
