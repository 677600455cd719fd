"""RecGPT's tag volume and the tag path of the graph: the tags-only mode, the arbiter's refill from the
candidate tools and the recorded shortfall, each tag's source, the grammar enum built from the tools'
candidates, and the tag evaluation's new baselines, recall figures and frontier verdict."""

from __future__ import annotations

import typing
from datetime import datetime

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from agents.context import Context, Environment
from agents.expert import expert_schema
from agents.tag_rules import TOOL_REFILL_PERSONA
from evals.tag_eval import CategoryFacts, frontier_at, paired, recall, verdicts
from graphs.prepare import prepare_user
from graphs.recommend import build_graph
from intentrec.service import IntentRec
from prompts.registry import PromptRegistry
from tests.graph_fakes import FakeRetriever, make_model
from tests.test_graph import run_node

NOW = "2017-10-01"


def _ctx(**kw) -> Context:
    return Context(models={"default": make_model(k=2)}, prompts=PromptRegistry(), env=Environment.at(NOW), **kw)


# ----- the graph ------------------------------------------------------------------------------------

def test_tags_only_mode_stops_after_the_tag_judge(cj, items, user_id):
    retriever = FakeRetriever(items)
    rec = IntentRec(dataset=cj, retriever=retriever, models={"default": make_model(k=2)},
                    checkpointer=InMemorySaver(), n_personas=2, n_tags=4, tags_only=True)
    out = rec.recommend(user_id, now=NOW)
    assert out["status"] == "tags_only"
    assert len(out["tags"]) == 4 and out["recommendations"] == []
    assert retriever.calls == []  # no retrieval, no explanations
    assert {"retrieve", "style", "facts", "explain"}.isdisjoint(out["node_totals"])
    assert out["node_totals"]["arbiter"]["calls"] == 1
    # the full graph on the same user still retrieves and explains
    full = IntentRec(dataset=cj, retriever=FakeRetriever(items), models={"default": make_model(k=2)},
                     checkpointer=InMemorySaver(), n_personas=2, n_tags=4).recommend(user_id, now=NOW)
    assert full["status"] == "ok" and full["recommendations"]


def test_category_personas_need_no_planner_call(cj, items, user_id):
    """The small-model profile's ``persona_source="categories"``: the personas are the user's
    most-bought categories (before ``now``), the planner makes no model call, the experts still run."""
    rec = IntentRec(dataset=cj, retriever=FakeRetriever(items), models={"default": make_model(k=2)},
                    checkpointer=InMemorySaver(), n_personas=2, n_tags=4, tags_only=True,
                    persona_source="categories")
    out = rec.recommend(user_id, now=NOW)
    hist = cj.history_with_items(user_id, before=datetime(2017, 10, 1))
    top = hist.filter(hist["category"].fill_null("") != "")["category"].value_counts(sort=True)["category"].to_list()[:2]
    assert [p["name"] for p in out["personas"]] == [f"{c.title()} shopper"[:30] for c in top]
    assert out["node_totals"]["planner"]["calls"] == 0
    assert out["node_totals"]["expert"]["calls"] == 2 and len(out["tags"]) == 4
    assert not [d for d in out["drops"] if d["stage"] == "planner"]
    # the default still asks the planner agent
    llm = IntentRec(dataset=cj, retriever=FakeRetriever(items), models={"default": make_model(k=2)},
                    checkpointer=InMemorySaver(), n_personas=2, n_tags=4, tags_only=True).recommend(user_id, now=NOW)
    assert llm["node_totals"]["planner"]["calls"] == 1


def test_arbiter_refills_from_the_candidate_tools_and_records_it(cj, items, user_id):
    g = build_graph(dataset=cj, retriever=FakeRetriever(items))
    ctx = _ctx(n_personas=2, n_tags=4)
    pool = [{"tag": "organic baby food", "persona": "a", "intent": "i", "reason": "r", "evidence": "", "source": "free"}]
    cands = [{"phrase": "organic baby food", "category": "Baby Foods", "tool": "own", "why": "bought 3 times"},
             {"phrase": "fresh berries", "category": "Berries", "tool": "season", "why": "rising"},
             {"phrase": "frozen pizza", "category": "Frozen Pizza", "tool": "complement", "why": "lift 3.0"},
             {"phrase": "hot cocoa mix", "category": "Cocoa Mixes", "tool": "collaborative", "why": "similar"},
             {"phrase": "whole wheat bread", "category": "Bread", "tool": "own", "why": "bought 2 times"}]
    out = run_node(g, "arbiter", {"user_id": user_id, "shared_context": "CTX", "proposals": pool,
                                  "recent_purchases": ["fresh berries"], "tag_candidates": cands}, ctx)
    # the expert's one tag, then the tools' ranking: the duplicate and the recent purchase are skipped
    assert [t["tag"] for t in out["tags"]] == ["organic baby food", "frozen pizza", "hot cocoa mix", "whole wheat bread"]
    assert [t["source"] for t in out["tags"]] == ["free", "complement", "collaborative", "own"]
    assert {"stage": "arbiter", "subject": "tags", "reason": "filled_from_tools", "count": 3} in out["drops"]
    assert len(out["judge_requests"]) == 4  # refilled tags are judged like any other
    # a phrase in the user's candidate pool is grounded (tool and evidence) for the judge; a free one is not
    assert [r.grounding for r in out["judge_requests"]] == ["own: bought 3 times", "complement: lift 3.0",
                                                             "collaborative: similar", "own: bought 2 times"]


def test_the_judge_takes_relevance_from_log_grounding_and_nothing_else():
    from judges.rules import evaluate_rules
    from judges.schemas import JudgeRequest

    grounded = evaluate_rules(JudgeRequest(subject_id="t", kind="tag", text="whole milk", grounding="own: bought 9x"))
    assert grounded["relevance"].outcome == "good" and "own: bought 9x" in grounded["relevance"].reason
    assert "relevance" not in evaluate_rules(JudgeRequest(subject_id="t", kind="tag", text="whole milk"))
    # grounding never overrides a rule defect on another dimension
    vague = evaluate_rules(JudgeRequest(subject_id="t", kind="tag", text="some snacks", grounding="own: x"))
    assert vague["specificity"].outcome == "defect"


def test_too_few_tags_end_as_a_recorded_shortfall(cj, items, user_id, monkeypatch):
    # a small candidate pool (at most 14 phrases) cannot fill 50 tags
    monkeypatch.setattr("tools.candidates.PER_TOOL", {"own": 5, "collaborative": 3, "complement": 3, "season": 3})
    rec = IntentRec(dataset=cj, retriever=FakeRetriever(items), models={"default": make_model(k=2)},
                    checkpointer=InMemorySaver(), n_personas=2, n_tags=50, tags_only=True)
    out = rec.recommend(user_id, now=NOW)
    short = [d for d in out["drops"] if d["reason"] == "shortfall"]
    assert len(short) == 1 and short[0]["count"] == 50 - len(out["tags"]) > 0
    filled = [d for d in out["drops"] if d["reason"] == "filled_from_tools"]
    # the experts' tags come first; every other tag came from the candidate tools
    from_tools = [t for t in out["tags"] if t["persona"] == TOOL_REFILL_PERSONA]
    # (the tag judge may still drop a refilled tag, so the refill count is an upper bound)
    assert filled and filled[0]["count"] >= len(from_tools) > 0
    assert all(t["source"] == "free" for t in out["tags"][:len(out["tags"]) - len(from_tools)])
    assert {t["source"] for t in out["tags"]} - {"free"} <= {"own", "complement", "season", "collaborative"}


def test_expert_tags_record_which_tool_offered_them(cj, items, user_id):
    g = build_graph(dataset=cj, retriever=FakeRetriever(items))
    ctx = _ctx(n_personas=2, n_tags=3)
    persona = {"name": "Family Cook", "focus": "dinners", "evidence": ""}
    ex = run_node(g, "expert", {"persona": persona, "shared_context": "CTX",
                                "sources": {"family frozen pizza": "complement"}}, ctx)
    assert [(p["tag"], p["source"]) for p in ex["proposals"]] == [("family organic cereal", "free"),
                                                                  ("family frozen pizza", "complement")]


def test_one_intent_expert_asks_for_tags_without_an_intent_index(cj, items):
    """``intents_per_expert=1``: the schema holds one intent and bare tags, the prompt asks for one
    intent and no intent numbers, and every tag carries that intent."""
    g = build_graph(dataset=cj, retriever=FakeRetriever(items))
    seen = []

    def record(messages, schema):  # answers like the default rule, after noting what was asked
        if schema is not None and schema.__name__ == "ExpertOutput":
            seen.append((schema.model_json_schema(), str(messages[-1].content)))
        return None

    ctx = Context(models={"default": make_model(k=2, extra_rules=[record])}, prompts=PromptRegistry(),
                  env=Environment.at(NOW), n_personas=2, n_tags=3, intents_per_expert=1)
    persona = {"name": "Family Cook", "focus": "dinners", "evidence": ""}
    ex = run_node(g, "expert", {"persona": persona, "shared_context": "CTX"}, ctx)
    (schema, text), = seen
    assert schema["properties"]["intents"]["maxItems"] == 1
    tag_def = schema["$defs"][schema["properties"]["tags"]["items"]["$ref"].rsplit("/", 1)[1]]
    assert set(tag_def["properties"]) == {"tag"}
    assert "Write 1 intent the PERSONA" in text and "number of the intent" not in text
    assert [(p["tag"], p["intent"]) for p in ex["proposals"]] == [("family organic cereal", "family refresh"),
                                                                  ("family frozen pizza", "family refresh")]
    # two intents (the default): the index is asked for, and the prompt says how
    assert "intent" in expert_schema(3, None, 2).model_json_schema()["$defs"]["TagProposal"]["properties"]
    with pytest.raises(ValueError, match="intents_per_expert"):
        expert_schema(3, None, 3)


def test_grammar_enum_is_the_candidate_tools_pool(cj, user_id):
    ctx = _ctx(tag_vocabulary="catalogue")
    prep = prepare_user(cj, user_id, ctx)
    phrases = [c["phrase"] for c in prep.tag_candidates]
    assert len(phrases) >= 30 and {c["tool"] for c in prep.tag_candidates} >= {"own", "collaborative"}
    assert prep.tag_vocabulary == [p for p in phrases if p not in prep.recent_purchases]
    enum = expert_schema(15, tuple(prep.tag_vocabulary)).model_json_schema()
    tag_enum = next(v for k, v in enum["$defs"].items() if k.startswith("Tag"))["properties"]["tag"]["enum"]
    assert tag_enum == prep.tag_vocabulary
    # the shared context shows the tools' evidence, fenced as data
    assert "CANDIDATES (product types" in prep.shared_context
    assert f"«{phrases[0]}»" in prep.shared_context
    # without tools: no CANDIDATES section, and the catalogue types of the user's categories as the enum
    bare = prepare_user(cj, user_id, ctx, candidates=None)
    assert "CANDIDATES" not in bare.shared_context and bare.tag_candidates == [] and bare.tag_vocabulary
    # catalogue_size: the enum is the first N of that same list, in the tools' order
    small = prepare_user(cj, user_id, _ctx(tag_vocabulary="catalogue", catalogue_size=7))
    assert small.tag_vocabulary == prep.tag_vocabulary[:7]
    assert small.tag_candidates == prep.tag_candidates  # the refill still has the whole pool
    # evidence_per_tool: at most that many phrases per tool in CANDIDATES; 0 drops the section, not the enum
    two = prepare_user(cj, user_id, _ctx(tag_vocabulary="catalogue", evidence_per_tool=2))
    section = two.shared_context.split("CANDIDATES (product types", 1)[1]
    for tool_line in [ln for ln in section.splitlines() if ln.startswith("- ")]:
        assert tool_line.count("«") == 4, tool_line  # 2 phrases, each with its fenced reason
    none = prepare_user(cj, user_id, _ctx(tag_vocabulary="catalogue", evidence_per_tool=0))
    assert "CANDIDATES" not in none.shared_context and none.tag_vocabulary == prep.tag_vocabulary


# ----- the evaluation ---------------------------------------------------------------------------------

def test_recall_hand_computed():
    assert recall(["A", "B", "C"], {"A", "C", "D", "E"}, 30) == 0.5
    assert recall(["A", "B", "C"], {"C"}, 2) == 0.0
    assert recall(["A"], set(), 30) is None and recall(["A"], None, 30) is None


def test_mix_baselines_take_frequent_then_new_knn_categories():
    f = CategoryFacts(cutoff=datetime(2017, 10, 1), end=datetime(2017, 10, 29), recent_days=14,
                      popular=["P", "A", "Q"], k=6)
    f.frequent["u"] = ["A", "B", "C", "D", "E", "F", "G"]
    f.seen["u"] = set(f.frequent["u"])
    f.knn_new["u"] = ["X", "Y", "Z", "W", "V", "U"]
    # mix_20_10 at K = 6: round(20 * 6 / 30) = 4 frequent, then 2 kNN
    assert f.baseline("mix_20_10", "u") == ["A", "B", "C", "D", "X", "Y"]
    assert f.baseline("mix_5_25", "u") == ["A", "X", "Y", "Z", "W", "V"]
    assert f.baseline("popular_new", "u") == ["P", "Q"]
    f.window["u"] = {"A", "X", "N"}
    assert f.new_in_window("u") == {"X", "N"}


def _row(hr: float, disc: float) -> dict[str, typing.Any]:
    return {"hr@k": hr, "discovery_hr@k": disc}


def test_frontier_interpolates_between_the_mixes():
    table = {"knn_new": _row(0.1, 0.5), "mix_5_25": _row(0.2, 0.45), "mix_10_20": _row(0.3, 0.4),
             "mix_15_15": _row(0.5, 0.3), "mix_20_10": _row(0.55, 0.24), "mix_25_5": _row(0.58, 0.15),
             "frequent": _row(0.6, 0.0)}
    at, how = frontier_at(table, 0.4)  # halfway between mix_10_20 (0.3, 0.4) and mix_15_15 (0.5, 0.3)
    assert at == pytest.approx(0.35) and how == "between mix_10_20 and mix_15_15"
    assert frontier_at(table, 0.7) == (0.0, "above the frontier's range: frequent's value")
    assert frontier_at(table, 0.05)[0] == 0.5
    per_user = {"u1": {"intentrec": {"hit": 1.0, "discovery_hit": 1.0}, "tools_only": {"hit": 0.0, "discovery_hit": 1.0}},
                "u2": {"intentrec": {"hit": 0.0, "discovery_hit": 0.0}, "tools_only": {"hit": 1.0, "discovery_hit": 1.0}},
                "u3": {"intentrec": {"hit": 0.0, "discovery_hit": None}, "tools_only": {"hit": 1.0, "discovery_hit": None}}}
    above = verdicts({**table, "intentrec": _row(0.4, 0.36), "tools_only": _row(0.4, 0.3)}, per_user)
    assert above["above_frontier"]["pass"] is True and above["above_frontier"]["frontier_discovery_hr@k"] == 0.35
    assert above["llm_vs_tools_only"]["pass"] is True
    below = verdicts({**table, "intentrec": _row(0.4, 0.34), "tools_only": _row(0.45, 0.3)}, per_user)
    assert below["above_frontier"]["pass"] is False and below["llm_vs_tools_only"]["pass"] is False
    assert paired(per_user, "intentrec", "tools_only", "hit") == {"only_intentrec": 1, "only_tools_only": 2}
    assert below["llm_vs_tools_only"]["paired_discovery_hit"] == {"only_intentrec": 0, "only_tools_only": 1}


def test_node_totals_give_the_span_of_parallel_tasks_beside_their_sum():
    from graphs.recommend import _totals

    times = [{"node": "expert", "wall_s": 2.0, "start": 100.0}, {"node": "expert", "wall_s": 2.0, "start": 101.0},
             {"node": "expert", "wall_s": 1.0, "start": 105.0}, {"node": "arbiter", "wall_s": 0.5, "start": 106.0},
             {"node": "old", "wall_s": 1.0}]  # a checkpoint written before starts were recorded
    tot = _totals({"node_times": times})
    assert tot["expert"]["wall_s"] == 5.0 and tot["expert"]["span_s"] == 4.0 and tot["expert"]["runs"] == 3
    assert tot["arbiter"]["span_s"] == 0.5 and "span_s" not in tot["old"]
