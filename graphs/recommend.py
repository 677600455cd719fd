"""The recommendation graph (RecGPT-V2 as one LangGraph graph).

::

    prepare ─► planner ─► expert ×K (Send) ─► arbiter ─► judge_tags ─► tag_gate ─┬─► retrieve
                  │                              ▲                              │
                  │                              └──── B tags, regen left ──────┘
                  └─(planner failed: fallback)──────────────────────────────────────► retrieve
    retrieve ─► style ─► explain ×items (Send) ─► judge_prep ─► judge_explanations ─► explain_gate ─┬─► emit
                            ▲                                                                      │
                            └──────────────── B explanations, regen left (Send with feedback) ─────┘

With ``Context.tags_only`` the tag gate (and the planner's collaborative fallback) go straight to
``emit``: tags, no items, status ``tags_only``. That is the part ``eval tags`` scores.

Tags: each expert writes up to ``Context.tags_per_expert``; the arbiter keeps ``Context.n_tags``
(30, as RecGPT scores). When the experts' pool holds fewer, the rest come from the candidate tools'
own ranking (``state["tag_candidates"]``, from ``graphs.prepare``), counted as ``filled_from_tools``
and judged like any other; every tag carries ``source``: the tool that offered the phrase, or
``free``. Fewer than N passed tags at the end is a ``shortfall`` drop with its count.

``style`` writes one guideline per persona (meta-prompting stage 1); each ``explain`` task writes
one item's line with its persona's guideline, and a regeneration reuses that guideline. With
``Context.explanations == "facts"``, ``retrieve`` goes to ``facts`` instead, which states every
line from the user's history without a model call, and the judge grades those.

* ``build_graph(dataset=..., retriever=..., checkpointer=...)`` injects every dependency; models and
  prompts come from the run-time :class:`~agents.context.Context`.
* The judge subgraph is added as a real node (twice: tags, explanations), so its evaluator and
  reviewer nodes show up in ``stream(..., subgraphs=True)``.
* Only S/A outputs are emitted. B outputs go back once per ``Context.regen_limit`` with the judge's
  feedback and are dropped after that; every drop is recorded in ``drops`` with its stage and reason.
* Every node is wrapped by :func:`_node`: it binds ``node`` (and ``run_id``) in structlog's
  contextvars, times the node, and turns an unexpected exception into :class:`NodeError` naming the
  node. Typed user errors (unknown user, empty history) pass through unchanged.
* ``Context.persona_source == "categories"`` (the small-model profile): the planner node writes the
  personas from the user's most-bought categories without a model call.
* Fallback: if the planner's output is invalid on every attempt, the personas come from the user's
  most-bought categories (``judges.personas.category_personas``, the same replacement as for
  defective personas; counted as a ``planner`` ``llm_invalid`` drop). Only a user without categories
  continues with collaborative-only retrieval (β = 1, marked in ``fallback``) when
  ``Context.fallback_collaborative`` is on.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any, Literal

import polars as pl
import structlog
from langgraph.errors import GraphBubbleUp
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command, Send

from agents.arbiter import apply_rules, arbitrate, normalize, round_robin_fill
from agents.context import Context
from agents.expert import propose
from agents.explainer import explain, facts_explanation, style_for
from agents.planner import plan
from agents.tag_rules import TOOL_REFILL_PERSONA
from behavior.schema import Dataset
from core.errors import EmptyHistoryError, IntentRecError
from core.intervals import union_length
from graphs.prepare import prepare_user
from graphs.state import InputState, OutputState, State
from judges.personas import category_personas, persona_defects, persona_feedback
from judges.schemas import ItemFacts, JudgeRequest
from llm.structured import LLMError

log = structlog.get_logger("intentrec.graph")

#: the intent an item without one (collaborative channel) is explained under
DEFAULT_INTENT = "what this customer usually buys"


class NodeError(IntentRecError):
    def __init__(self, node: str, cause: BaseException):
        self.node = node
        self.cause = cause
        super().__init__(f"node {node!r} failed: {type(cause).__name__}: {cause}")


def _node(name: str) -> Callable:
    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(state: Any, runtime: Runtime[Context]) -> Any:
            run_id = state.get("run_id", "") if isinstance(state, dict) else ""
            t0, started = time.perf_counter(), time.time()
            with structlog.contextvars.bound_contextvars(node=name, run_id=run_id):
                try:
                    out = fn(state, runtime)
                except (GraphBubbleUp, IntentRecError):
                    raise
                except Exception as e:
                    log.error("node failed", error=str(e))
                    raise NodeError(name, e) from e
            timing = {"node_times": [{"node": name, "wall_s": round(time.perf_counter() - t0, 4),
                                      "start": round(started, 4)}]}
            if isinstance(out, Command):
                upd = dict(out.update or {})
                upd["node_times"] = upd.get("node_times", []) + timing["node_times"]
                return Command(goto=out.goto, update=upd, graph=out.graph)
            return {**(out or {}), **timing}

        return wrapper

    return deco


def _keep_discovery_share(cands: list[dict], want: int, share: float) -> list[dict]:
    """The first ``want`` candidates, except that at least ``round(share·want)`` of them are discovery
    (never bought) when the list has that many: the best discovery ones replace the last re-buys.
    The retriever's order is kept."""
    keep = set([i for i, c in enumerate(cands) if c["channel"] == "discovery"][:int(round(share * want))])
    for i in range(len(cands)):
        if len(keep) >= want:
            break
        keep.add(i)
    return [cands[i] for i in sorted(keep)]


def top_categories(dataset: Dataset, user_id: str, now: Any) -> list[tuple[str, list[str]]]:
    """The user's categories before ``now``, most bought first, each with its 3 most bought titles:
    what category personas are built from (``judges.personas.category_personas``)."""
    hist = dataset.history_with_items(user_id, before=now).filter(pl.col("category").fill_null("") != "")
    top = (hist.group_by("category", "title").len().sort(["len", "title"], descending=[True, False])
           .group_by("category", maintain_order=True).agg(pl.col("title").head(3), pl.col("len").sum())
           .sort(["len", "category"], descending=[True, False]))
    return [(r["category"], r["title"]) for r in top.iter_rows(named=True)]


def _drop(stage: str, subject: str, reason: str, **extra: Any) -> dict:
    return {"stage": stage, "subject": subject, "reason": reason, **extra}


def build_graph(*, dataset: Dataset, retriever: Any, checkpointer: Any = None, judge_graph: Any = None,
                count_tokens: Callable[[str], int] | None = None, preparer: Callable[..., Any] = prepare_user):
    """Compile the recommendation graph with its dependencies injected.

    ``preparer(dataset, user_id, ctx, count_tokens=...)`` builds the shared context (default:
    :func:`graphs.prepare.prepare_user`, hierarchical compression). ``retriever`` needs ``search(user_id, tags, k, *, beta=None, per_tag_quota=None,
    exclude_items=None, min_discovery_share=None)`` returning an object with ``candidates`` (each with item_id, title,
    category, score, tags, sources), ``user_known`` and ``flags`` (see ``retrieval.service``).
    """
    if judge_graph is None:
        from judges.subgraph import build_judge_graph

        judge_graph = build_judge_graph()
    brands = _brand_terms(dataset)
    # the retriever's HiSAC interest agents, when it has them, are persona evidence in the shared context
    interests = getattr(retriever, "interest_evidence", None)

    # ----- nodes --------------------------------------------------------------------------------
    @_node("prepare")
    def prepare(state: State, runtime: Runtime[Context]) -> dict:
        ctx = runtime.context
        extra = {"interests": interests} if interests is not None else {}
        prepared = preparer(dataset, state["user_id"], ctx, count_tokens=count_tokens, **extra)
        return {
            "run_id": state.get("run_id") or uuid.uuid4().hex,
            "status": "running",
            "shared_context": prepared.shared_context,
            "evidence": prepared.evidence,
            "recent_purchases": prepared.recent_purchases,
            "history_stats": prepared.stats,
            "tag_vocabulary": prepared.tag_vocabulary,
            "tag_candidates": prepared.tag_candidates,
            "tags_only": ctx.tags_only,
        }

    @_node("planner")
    def planner(state: State, runtime: Runtime[Context]) -> dict:
        ctx = runtime.context
        shared = state["shared_context"]
        if ctx.persona_source == "categories":
            out = category_personas(_top_categories(state["user_id"], ctx), ctx.n_personas, set())
            if out:
                return {"personas": out, "calls": [], "fallback": None}
            if not ctx.fallback_collaborative:
                raise EmptyHistoryError(state["user_id"], "no categorised purchase to build personas from "
                                        "(persona_source='categories', fallback_collaborative off)")
            return {"personas": [], "calls": [], "fallback": "collaborative_only: no categories to build personas from"}
        texts = [t for name in ("planner", "shared_context") for t in ctx.prompts.get(name).example_texts()]
        calls = []
        try:
            personas, stat = plan(ctx, shared)
            calls.append(stat)
            for _ in range(ctx.regen_limit):
                defects = persona_defects(personas, prompt_texts=texts, allowed=shared)
                if not defects:
                    break
                personas, stat = plan(ctx, shared, feedback=persona_feedback(defects))
                calls.append(stat)
        except LLMError as e:
            # no valid answer at all: every persona comes from the user's own categories (counted)
            drops = [_drop("planner", "personas", "llm_invalid", error=str(e)[:300])]
            out = category_personas(_top_categories(state["user_id"], ctx), ctx.n_personas, set())
            if not out and not ctx.fallback_collaborative:
                raise
            if not out:
                return {"personas": [], "fallback": f"collaborative_only: planner failed: {e}", "calls": calls,
                        "drops": drops}
            return {"personas": out, "calls": calls, "fallback": None, "drops": drops}
        out = [p.model_dump() for p in personas]
        defects = persona_defects(personas, prompt_texts=texts, allowed=shared)
        drops = [_drop("planner", out[i]["name"], "persona_defect", error=why) for i, why in sorted(defects.items())]
        if defects:
            taken = {p["name"].lower() for i, p in enumerate(out) if i not in defects}
            spare = iter(category_personas(_top_categories(state["user_id"], ctx), len(defects), taken))
            out = [p if i not in defects else next(spare, None) for i, p in enumerate(out)]
            out = [p for p in out if p is not None]  # a user with fewer categories than defects
        if not out:
            return {"personas": [], "calls": calls, "drops": drops,
                    "fallback": "collaborative_only: no usable persona after the planner's retries"}
        return {"personas": out, "calls": calls, "fallback": None, "drops": drops}

    def _top_categories(user_id: str, ctx: Context) -> list[tuple[str, list[str]]]:
        return top_categories(dataset, user_id, ctx.env.now)

    def route_planner(state: State) -> Any:
        if state.get("fallback"):
            return "emit" if state.get("tags_only") else "retrieve"
        shared = state["shared_context"]
        vocab = state.get("tag_vocabulary") or []
        sources = {k: c["tool"] for k, c in _candidates_by_key(state).items()}
        return [Send("expert", {"persona": p, "shared_context": shared, "run_id": state.get("run_id", ""),
                                "vocabulary": vocab, "sources": sources}) for p in state["personas"]]

    @_node("expert")
    def expert(payload: dict, runtime: Runtime[Context]) -> dict:
        persona = payload["persona"]
        try:
            ctx = runtime.context
            vocab = tuple(payload.get("vocabulary") or ()) if ctx.tag_vocabulary == "catalogue" else None
            out, stat = propose(ctx, payload["shared_context"], persona, vocabulary=vocab or None)
        except LLMError as e:
            return {"drops": [_drop("expert", persona["name"], "llm_invalid", error=str(e)[:300])]}
        intents = list(out.intents)
        sources = payload.get("sources") or {}
        proposals = [
            {"tag": t.tag.strip(), "persona": persona["name"], "intent": (i := intents[min(getattr(t, "intent", 0), len(intents) - 1)]).interest,
             "reason": i.reason, "evidence": persona.get("evidence", ""),
             # which candidate tool offered this phrase, or "free" (the model wrote it itself)
             "source": sources.get(normalize(t.tag), "free")}
            for t in out.tags
        ]
        return {"proposals": proposals, "calls": [stat]}

    @_node("arbiter")
    def arbiter(state: State, runtime: Runtime[Context]) -> dict:
        """First pass: choose N tags. Regeneration pass: keep the tags the judge passed, and replace
        the rest from the pool minus every tag already judged."""
        ctx = runtime.context
        verdicts = state.get("verdicts") or {}
        judged = {normalize(v.subject_id.removeprefix("tag:")) for v in verdicts.values() if v.kind == "tag"}
        first_pass = not state.get("regen", {}).get("tags")
        keep = [] if first_pass else [
            t for t in state.get("tags", []) if (v := verdicts.get(_tag_sid(t))) is not None and v.passed]
        kept, rejected = apply_rules(state.get("proposals", []), brands=brands,
                                     recent=set(state.get("recent_purchases", [])), exclude=judged)
        update: dict[str, Any] = {"tags": keep, "judge_requests": []}
        if first_pass:
            update["drops"] = [_drop("arbiter_rules", r["tag"], r["reason_rejected"], persona=r["persona"])
                               for r in rejected]
        want = ctx.n_tags - len(keep)
        if want <= 0:
            return update
        new: list[dict] = []
        if kept:
            feedback = _feedback_for(state, kind="tag")
            try:
                chosen, stat, invalid = arbitrate(ctx, state["shared_context"], kept, feedback, n=want)
                update["calls"] = [stat]
                if invalid:
                    update.setdefault("drops", []).append(_drop("arbiter", "choices", "invalid_index", count=invalid))
            except LLMError as e:
                chosen = round_robin_fill(kept, [], min(want, len(kept)))
                update.setdefault("drops", []).append(_drop("arbiter", "choices", "llm_invalid_rule_fill",
                                                            error=str(e)[:300]))
            new = [kept[i] for i in chosen]
        # fewer than N from the experts: the rest from the candidate tools' own ranking (counted, and
        # judged like any other tag)
        refill = _tool_refill(state, keep + new, judged, want - len(new))
        if refill:
            update.setdefault("drops", []).append(_drop("arbiter", "tags", "filled_from_tools", count=len(refill)))
        new += refill
        if not new:
            return update
        update["tags"] = keep + new
        grounded = {k: f"{c['tool']}: {c['why']}" for k, c in _candidates_by_key(state).items()}
        update["judge_requests"] = [
            JudgeRequest(subject_id=_tag_sid(t), kind="tag", text=t["tag"],
                         intent=f"{t['persona']}: {t['intent']}", evidence=t.get("evidence", ""),
                         grounding=grounded.get(normalize(t["tag"]), ""),
                         recent_purchases=state.get("recent_purchases", [])[:30],
                         environment=ctx.env.describe(), banned_terms=sorted(brands))
            for t in new
        ]
        return update

    @_node("tag_gate")
    def tag_gate(state: State, runtime: Runtime[Context]) -> Command[Literal["arbiter", "retrieve", "emit"]]:
        """Count every tag graded B in this pass as dropped (the arbiter never picks it again); go back
        to the arbiter while regenerations are left and a tag failed, else on to retrieval (or to
        ``emit`` with ``Context.tags_only``). Fewer than N passed tags at the end is recorded as a
        ``shortfall`` drop with its count."""
        ctx = runtime.context
        verdicts = state.get("verdicts") or {}
        failed = [t for t in state.get("tags", []) if (v := verdicts.get(_tag_sid(t))) is None or not v.passed]
        passed = [dict(t, grade=verdicts[_tag_sid(t)].grade) for t in state.get("tags", []) if t not in failed]
        drops = [_drop("judge_tags", t["tag"], "graded_B", persona=t["persona"]) for t in failed]
        n_regen = state.get("regen", {}).get("tags", 0)
        if failed and n_regen < ctx.regen_limit:
            return Command(goto="arbiter", update={"regen": {"tags": n_regen + 1}, "drops": drops,
                                                    "tags": passed})
        if len(passed) < ctx.n_tags:
            drops.append(_drop("tag_gate", "tags", "shortfall", count=ctx.n_tags - len(passed)))
        return Command(goto="emit" if state.get("tags_only") else "retrieve", update={"tags": passed, "drops": drops})

    @_node("retrieve")
    def retrieve(state: State, runtime: Runtime[Context]) -> dict:
        ctx = runtime.context
        tags = state.get("tags", [])
        want = ctx.n_items
        # twice as many as needed: catalogues repeat a title under several ids (completejourney has
        # "Bagged Cheese Snacks, 12 oz" from two manufacturers); only the best-scored one is shown
        if state.get("fallback") or not tags:
            res = retriever.search(state["user_id"], [], 2 * want, beta=1.0,
                                   min_discovery_share=ctx.discovery_share)
            fallback = state.get("fallback") or "collaborative_only: no tag passed the judge"
            by_tag: dict[str, dict] = {}
        else:
            res = retriever.search(state["user_id"], [t["tag"] for t in tags],
                                   2 * max(want, ctx.items_per_tag * len(tags)),
                                   beta=ctx.beta, per_tag_quota=ctx.items_per_tag,
                                   min_discovery_share=ctx.discovery_share)
            fallback = None
            by_tag = {t["tag"]: t for t in tags}
        cands, titles, dup_drops = [], set(), []
        for c in res.candidates:
            key = " ".join(c.title.lower().split())
            if key in titles:
                dup_drops.append(_drop("retrieve", c.item_id, "duplicate_title"))
                continue
            titles.add(key)
            src_tag = next((t for t in c.tags if t in by_tag), None)
            t = by_tag.get(src_tag or "", {})
            cands.append({
                "item_id": c.item_id, "title": c.title, "category": c.category, "score": round(float(c.score), 6),
                "user_score": c.user_score, "tag_score": c.tag_score, "tag": src_tag, "sources": list(c.sources),
                "channel": getattr(c, "channel", "fused"),
                "persona": t.get("persona"), "intent": t.get("intent", ""), "evidence": t.get("evidence", ""),
            })
        cands = _keep_discovery_share(cands, want, ctx.discovery_share)
        update: dict[str, Any] = {"candidates": cands, "fallback": fallback}
        drops = [_drop("retrieve", state["user_id"], f"flag:{f}") for f in res.flags] + dup_drops
        if drops:
            update["drops"] = drops
        return update

    def route_retrieve(state: State, runtime: Runtime[Context]) -> str:
        if not state.get("candidates"):
            return "emit"
        return "facts" if runtime.context.explanations == "facts" else "style"

    @_node("facts")
    def facts(state: State, runtime: Runtime[Context]) -> dict:
        """``Context.explanations == "facts"``: every item's line stated from the user's own history.
        A line the judge still rejects is dropped (no regeneration: there is no model to ask)."""
        ctx = runtime.context
        lines = {c["item_id"]: {"text": t, "source": "facts"}
                 for c, t in zip(state["candidates"], _facts_lines(state["user_id"], state["candidates"], ctx), strict=True)}
        return {"explanations": lines, "regen": {f"expl:{i}": ctx.regen_limit + 1 for i in lines}}

    def _persona_of(c: dict) -> str:
        return c.get("persona") or "regular shopper"

    @_node("style")
    def style(state: State, runtime: Runtime[Context]) -> dict:
        """Meta-prompting stage 1: one guideline per persona among the candidates."""
        ctx = runtime.context
        groups: dict[str, list[dict]] = defaultdict(list)
        for c in state["candidates"]:
            groups[_persona_of(c)].append(c)
        guides, calls, drops = {}, [], []
        for persona, cands in groups.items():
            try:
                text, stat = style_for(ctx, persona=persona,
                                       intents=[c.get("intent") or DEFAULT_INTENT for c in cands],
                                       titles=[c["title"] for c in cands])
            except LLMError as e:  # stage 2 still runs, with no guideline
                drops.append(_drop("style", persona, "llm_invalid", error=str(e)[:300]))
                text = ""
            else:
                calls.append(stat)
            guides[persona] = text
        update: dict[str, Any] = {"guidelines": guides, "calls": calls}
        if drops:
            update["drops"] = drops
        return update

    def _explain_send(state: State, cand: dict, feedback: str) -> Send:
        return Send("explain", {"item": cand, "evidence": state.get("evidence", ""), "run_id": state.get("run_id", ""),
                                "guideline": (state.get("guidelines") or {}).get(_persona_of(cand), ""),
                                "feedback": feedback})

    def route_explain(state: State) -> Any:
        return [_explain_send(state, c, "") for c in state["candidates"]]

    @_node("explain")
    def explain_node(payload: dict, runtime: Runtime[Context]) -> dict:
        c = payload["item"]
        item = _item_facts(dataset, c["item_id"])
        intent = c.get("intent") or DEFAULT_INTENT
        guide = payload.get("guideline", "")
        try:
            text, stat = explain(runtime.context, item=item.model_dump(), guideline=guide, intent=intent,
                                 evidence=c.get("evidence") or payload["evidence"],
                                 feedback=payload.get("feedback", ""))
        except LLMError as e:
            return {"drops": [_drop("explain", c["item_id"], "llm_invalid", error=str(e)[:300])],
                    "explanations": {c["item_id"]: {"text": "", "failed": True}}}
        return {"explanations": {c["item_id"]: {"text": text, "guideline": guide}}, "calls": [stat]}

    @_node("judge_prep")
    def judge_prep(state: State, runtime: Runtime[Context]) -> dict:
        ctx = runtime.context
        verdicts = state.get("verdicts") or {}
        prompt_texts = [t for name in ("explainer", "explainer_style") for t in ctx.prompts.get(name).example_texts()]
        reqs = []
        for c in state.get("candidates", []):
            e = (state.get("explanations") or {}).get(c["item_id"])
            if not e or e.get("failed"):
                continue
            sid = f"expl:{c['item_id']}"
            v = verdicts.get(sid)
            if v is not None and v.passed:
                continue
            reqs.append(JudgeRequest(
                subject_id=sid, kind="explanation", text=e["text"],
                intent=f"{c.get('persona') or ''}: {c.get('intent') or ''}", evidence=c.get("evidence") or state.get("evidence", ""),
                item=_item_facts(dataset, c["item_id"]), environment=ctx.env.describe(), banned_terms=sorted(brands),
                prompt_texts=prompt_texts,
            ))
        return {"judge_requests": reqs}

    @_node("explain_gate")
    def explain_gate(state: State, runtime: Runtime[Context]) -> Command:
        ctx = runtime.context
        verdicts = state.get("verdicts") or {}
        regen = state.get("regen") or {}
        sends, drops, counters, fallback = [], [], {}, []
        for req in state.get("judge_requests", []):
            v = verdicts.get(req.subject_id)
            if v is not None and v.passed:
                continue
            item_id = req.subject_id.removeprefix("expl:")
            n = regen.get(req.subject_id, 0)
            cand = next(c for c in state["candidates"] if c["item_id"] == item_id)
            if n < ctx.regen_limit:
                counters[req.subject_id] = n + 1
                sends.append(_explain_send(state, cand, v.feedback if v else "no verdict"))
            elif n == ctx.regen_limit and ctx.explanation_fallback == "facts":
                counters[req.subject_id] = n + 1  # one judged try of the facts line, then drop
                fallback.append(cand)
                drops.append(_drop("judge_explanations", item_id, "explanation_from_facts"))
            else:
                drops.append(_drop("judge_explanations", item_id, "graded_B_after_regen"))
        if sends:
            return Command(goto=sends, update={"regen": counters, "drops": drops})
        facts = {c["item_id"]: {"text": t, "source": "facts"}
                 for c, t in zip(fallback, _facts_lines(state["user_id"], fallback, ctx), strict=True)}
        if facts:
            return Command(goto="judge_prep", update={"regen": counters, "explanations": facts, "drops": drops})
        return Command(goto="emit", update={"drops": drops})

    def _facts_lines(user_id: str, cands: list[dict], ctx: Context) -> list[str]:
        """The facts line of each candidate, from one read of the user's history."""
        if not cands:
            return []
        hist = dataset.history_with_items(user_id, before=ctx.env.now)
        items, cats = Counter(hist["item_id"].to_list()), Counter(hist["category"].to_list())
        return [facts_explanation(c["title"], c.get("category") or "", tag=c.get("tag"),
                                  item_count=items[c["item_id"]],
                                  category_count=cats[c["category"]] if c.get("category") else 0) for c in cands]

    @_node("emit")
    def emit(state: State, runtime: Runtime[Context]) -> dict:
        verdicts = state.get("verdicts") or {}
        recs = []
        for c in state.get("candidates", []):
            e = (state.get("explanations") or {}).get(c["item_id"]) or {}
            v = verdicts.get(f"expl:{c['item_id']}")
            if not e.get("text") or v is None or not v.passed:
                continue
            tv = verdicts.get(_tag_sid(c)) if c.get("tag") else None
            recs.append({
                "item_id": c["item_id"], "title": c["title"], "category": c["category"], "tag": c.get("tag"),
                "persona": c.get("persona"), "score": c["score"], "sources": c["sources"],
                "channel": c.get("channel", "fused"), "explanation": e["text"], "guideline": e.get("guideline", ""), "grade": v.grade,
                "explanation_source": e.get("source", "llm"),
                "tag_grade": tv.grade if tv else None,
                "dimensions": {d.dimension: d.outcome for d in v.dimensions},
            })
        if state.get("tags_only"):
            status = "tags_only" if state.get("tags") else "empty"
        else:
            status = "ok" if recs else "empty"
        if state.get("fallback"):
            status = f"{status}:fallback"
        return {"recommendations": recs, "status": status, "node_totals": _totals(state)}

    # ----- wiring -------------------------------------------------------------------------------
    g = StateGraph(State, input_schema=InputState, output_schema=OutputState, context_schema=Context)
    g.add_node("prepare", prepare)
    g.add_node("planner", planner)
    g.add_node("expert", expert)
    g.add_node("arbiter", arbiter)
    g.add_node("judge_tags", judge_graph)
    g.add_node("tag_gate", tag_gate)
    g.add_node("retrieve", retrieve)
    g.add_node("style", style)
    g.add_node("facts", facts)
    g.add_node("explain", explain_node)
    g.add_node("judge_prep", judge_prep)
    g.add_node("judge_explanations", judge_graph)
    g.add_node("explain_gate", explain_gate)
    g.add_node("emit", emit)
    g.add_edge(START, "prepare")
    g.add_edge("prepare", "planner")
    g.add_conditional_edges("planner", route_planner, ["expert", "retrieve", "emit"])
    g.add_edge("expert", "arbiter")
    g.add_edge("arbiter", "judge_tags")
    g.add_edge("judge_tags", "tag_gate")
    g.add_conditional_edges("retrieve", route_retrieve, ["style", "facts", "emit"])
    g.add_edge("facts", "judge_prep")
    g.add_conditional_edges("style", route_explain, ["explain"])
    g.add_edge("explain", "judge_prep")
    g.add_edge("judge_prep", "judge_explanations")
    g.add_edge("judge_explanations", "explain_gate")
    g.add_edge("emit", END)
    return g.compile(checkpointer=checkpointer, name="intentrec")


def recursion_limit(ctx: Context) -> int:
    """Supersteps the graph can take: 13 on the straight path (a subgraph node is one step), plus 3
    per tag regeneration, 4 per explanation regeneration and 3 for the judged facts lines of the
    ``facts`` explanation fallback, plus slack."""
    return 13 + 3 * ctx.regen_limit + 4 * ctx.regen_limit + 3 + 4


def _candidates_by_key(state: State) -> dict[str, dict]:
    """The candidate tools' entries by normalised phrase (the first entry wins, as in the pool)."""
    out: dict[str, dict] = {}
    for c in state.get("tag_candidates") or []:
        out.setdefault(normalize(c["phrase"]), c)
    return out


def _tool_refill(state: State, taken: list[dict], judged: set[str], n: int) -> list[dict]:
    """Up to ``n`` tags from the candidate tools' ranking (``state["tag_candidates"]``, in order),
    skipping phrases already chosen, already judged, or recently bought."""
    if n <= 0:
        return []
    skip = judged | {normalize(t["tag"]) for t in taken} | {normalize(r) for r in state.get("recent_purchases", [])}
    out = []
    for c in state.get("tag_candidates") or []:
        norm = normalize(c["phrase"])
        if norm in skip:
            continue
        skip.add(norm)
        out.append({"tag": c["phrase"], "persona": TOOL_REFILL_PERSONA, "intent": c.get("why", ""), "reason": "",
                    "evidence": c.get("why", ""), "source": c["tool"]})
        if len(out) >= n:
            break
    return out


def _tag_sid(tag: dict) -> str:
    return f"tag:{normalize(tag['tag'])}"


def _feedback_for(state: State, *, kind: str) -> str:
    vs = [v for v in (state.get("verdicts") or {}).values() if v.kind == kind and not v.passed and v.feedback]
    return " ".join(f"{v.subject_id.split(':', 1)[1]}: {v.feedback}" for v in vs)[:600]


def _brand_terms(dataset: Dataset) -> set[str]:
    vals = dataset.items["brand"].drop_nulls().unique().to_list()
    return {v for v in vals if v and v.lower() not in {"national", "private", "unknown", "generic", "none"}}


def _item_facts(dataset: Dataset, item_id: str) -> ItemFacts:
    it = dataset.item(item_id)
    return ItemFacts(item_id=it.item_id, title=it.title, category=it.category, category_path=it.category_path,
                     brand=it.brand, attributes=it.attributes)


def _totals(state: State) -> dict[str, dict[str, Any]]:
    tot: dict[str, dict[str, Any]] = defaultdict(lambda: {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                                          "llm_s": 0.0, "wall_s": 0.0, "runs": 0})
    for c in state.get("calls", []):
        t = tot[c["node"]]
        t["calls"] += 1
        t["prompt_tokens"] += c.get("prompt_tokens", 0)
        t["completion_tokens"] += c.get("completion_tokens", 0)
        t["llm_s"] += c.get("latency_s", 0.0)
    for c in state.get("judge_calls", []):
        t = tot["judge"]
        t["calls"] += 1
        t["prompt_tokens"] += c.get("prompt_tokens", 0)
        t["completion_tokens"] += c.get("completion_tokens", 0)
        t["llm_s"] += c.get("latency_s", 0.0)
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for n in state.get("node_times", []):
        tot[n["node"]]["wall_s"] += n["wall_s"]
        tot[n["node"]]["runs"] += 1
        if "start" in n:
            spans[n["node"]].append((n["start"], n["start"] + n["wall_s"]))
    for node, ivs in spans.items():  # the time the node's tasks covered: parallel tasks count once
        tot[node]["span_s"] = union_length(ivs)
    return {k: {kk: (round(vv, 4) if isinstance(vv, float) else vv) for kk, vv in v.items()} for k, v in tot.items()}
