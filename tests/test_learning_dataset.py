"""The learning loop's dataset (learning/dataset.py) on real completejourney slices and hand-made data:
no target on or after T, prompts identical to the graph's expert prompts, targets valid in the expert
schema, the persona split, and the curriculum tasks."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import polars as pl
import pydantic
import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.checkpoint.memory import InMemorySaver

from agents.context import SMALL_MODEL_PROMPT
from agents.expert import expert_schema
from intentrec.service import IntentRec
from learning.dataset import (
    BuildConfig,
    LeakageError,
    build_examples,
    check_no_leakage,
    persona_targets,
    target_json,
    type_complement,
)
from learning.reward import RewardConfig
from llm.local import LocalChatModel
from runlog.store import RunLog
from tests.graph_fakes import FakeRetriever, make_model
from tests.test_tag_tools import T as TINY_T
from tests.test_tag_tools import lift_rows, make
from tools.tag_stats import TagStats

CUT = "2017-08-20"
CONFIG = BuildConfig(cutoffs=(CUT,), users_per_cutoff=3, curriculum=4)


@pytest.fixture(scope="module")
def built(cj):
    return build_examples(cj, CONFIG)


def test_a_window_reaching_the_evaluation_date_is_refused(cj):
    check_no_leakage(("2017-09-03",), 28, "2017-10-01")  # ends on T: targets strictly before it
    with pytest.raises(LeakageError, match="2017-09-10: its 28-day target window ends 2017-10-08"):
        check_no_leakage(("2017-04-02", "2017-09-10"), 28, "2017-10-01")
    with pytest.raises(LeakageError):
        build_examples(cj, BuildConfig(cutoffs=("2017-09-10",), users_per_cutoff=1, curriculum=0))


def test_every_target_lies_before_T_and_no_later_row_changes_the_set(cj, built):
    rows, stats = built
    t = datetime(2017, 10, 1)
    tasks = [r for r in rows if r["meta"]["stage"] == "task"]
    assert tasks and stats.examples == len(tasks) and stats.curriculum == 4
    assert all(datetime.fromisoformat(r["meta"]["window_end"]) <= t for r in tasks)
    assert datetime.fromisoformat(stats.target_last_ts) < t
    # plant purchases on and after T for the sampled users: the examples do not change
    users = sorted({r["meta"]["user_id"] for r in tasks})
    item = cj.items["item_id"][0]
    planted = pl.DataFrame([{"user_id": u, "item_id": item, "behavior": "purchase", "ts": t + timedelta(days=d),
                             "query": None, "value": 1.0} for u in users for d in (0, 3)],
                           schema=cj.behaviors.schema)
    later = type(cj)(name=cj.name, items=cj.items, users=cj.users,
                     behaviors=pl.concat([cj.behaviors, planted]), weights=cj.weights)
    again, _ = build_examples(later, CONFIG)
    assert again == rows


def test_targets_are_valid_expert_answers_from_the_enum(built):
    rows, _ = built
    for r in (r for r in built[0] if r["meta"]["stage"] == "task"):
        answer = json.loads(r["completion"][0]["content"])
        # as long as the reward's length gate asks (RewardConfig.min_tags), so SFT teaches passing lists
        assert RewardConfig().min_tags <= len(answer["tags"]) <= 15 and len(answer["tags"]) == r["meta"]["targets"]
        assert {t["tag"] for t in answer["tags"]} <= set(r["meta"]["vocabulary"])
        # the small-model profile's one intent per expert: its tags carry no intent index
        assert r["meta"]["intents"] == SMALL_MODEL_PROMPT["intents_per_expert"] == len(answer["intents"]) == 1
        assert all(set(t) == {"tag"} for t in answer["tags"])
        expert_schema(15, tuple(r["meta"]["vocabulary"]), r["meta"]["intents"]).model_validate(answer)
    # the K personas of a user learn different lists
    by_user: dict[str, list[str]] = {}
    for r in (r for r in rows if r["meta"]["stage"] == "task"):
        by_user.setdefault(r["meta"]["user_id"], []).append(r["completion"][0]["content"])
    assert all(len(set(v)) == len(v) for v in by_user.values())


def test_prompts_are_the_graphs_expert_prompts(cj, items, built, tmp_path):
    """The same user and date through the graph (tags only, category personas, catalogue tags): every
    expert call's logged messages, with the local backend's schema hint, equal the dataset's prompt,
    at the small-model profile's prompt sizes."""
    rows, _ = built
    user = next(r for r in rows if r["meta"]["stage"] == "task")["meta"]["user_id"]
    store = RunLog(tmp_path / "r.sqlite")
    def from_enum(messages, schema):  # the scripted expert picks the first two phrases of its enum
        if schema is None or schema.__name__ != "ExpertOutput":
            return None
        defs = schema.model_json_schema()["$defs"]
        enum = next(v for k, v in defs.items() if k.startswith("TagChoice"))["properties"]["tag"]["enum"]
        return {"intents": [{"interest": "restock", "reason": "habit"}], "tags": [{"tag": t} for t in enum[:2]]}

    rec = IntentRec(dataset=cj, retriever=FakeRetriever(items), models={"default": make_model(k=3, extra_rules=[from_enum])},
                    runlog=store, checkpointer=InMemorySaver(), tags_only=True, persona_source="categories",
                    tag_vocabulary="catalogue", n_personas=3, **SMALL_MODEL_PROMPT)
    rec.recommend(user, now=CUT)
    calls = store.calls(store.runs(user=user)[0]["run_id"], node="expert")
    ours = {r["meta"]["persona"]: r for r in rows if r["meta"].get("user_id") == user}
    assert len(calls) == 3 and ours
    kinds = {"system": SystemMessage, "human": HumanMessage}
    compared = 0
    for c in calls:
        if c["subject"] not in ours:  # a persona without a bought type in the window has no example
            continue
        msgs = [kinds[m["role"]](m["content"]) for m in c["messages"]]
        schema = expert_schema(SMALL_MODEL_PROMPT["tags_per_expert"], tuple(ours[c["subject"]]["meta"]["vocabulary"]),
                               SMALL_MODEL_PROMPT["intents_per_expert"])
        expected = LocalChatModel().prepare(msgs, json_schema=schema.model_json_schema()).messages
        assert ours[c["subject"]]["prompt"] == expected
        compared += 1
    assert compared == len(ours)


def test_persona_split_own_category_first_then_new_round_robin():
    personas = [{"name": "a"}, {"name": "b"}]
    bought = [("white bread", "Bakery", False), ("potato chips", "Snacks", True), ("whole milk", "Dairy", False),
              ("green tea", "Drinks", True), ("tomato salsa", "Sauces", False)]
    got = persona_targets(personas, ["Bakery", "Dairy"], bought, per_persona=3)
    # own first; the rest, new categories first (chips, tea, salsa), dealt round-robin
    assert got == [[("white bread", False), ("potato chips", True), ("tomato salsa", False)],
                   [("whole milk", False), ("green tea", True)]]
    assert persona_targets(personas, ["Bakery", "Dairy"], bought, per_persona=1) == [[("white bread", False)],
                                                                                     [("whole milk", False)]]
    # topped up to the length gate from the other bought types, new categories first, no repeats
    got = persona_targets(personas, ["Bakery", "Dairy"], bought, per_persona=15, min_per_persona=4)
    assert got[0] == [("white bread", False), ("potato chips", True), ("tomato salsa", False), ("green tea", True)]
    assert got[1] == [("whole milk", False), ("green tea", True), ("potato chips", True), ("white bread", False)]
    # never above per_persona, and a household with fewer types than the gate gives what it has
    assert all(len(t) <= 3 for t in persona_targets(personas, ["Bakery", "Dairy"], bought, per_persona=3,
                                                     min_per_persona=5))
    assert len(persona_targets(personas[:1], ["Bakery"], bought[:2], per_persona=15, min_per_persona=5)[0]) == 2


def test_target_json_is_checked_against_the_enum():
    schema = expert_schema(15, ("white bread", "green tea"))
    persona = {"name": "Bakery shopper", "focus": "buys bakery"}
    obj = json.loads(target_json([("white bread", False), ("green tea", True)], persona, schema))
    assert obj == {"intents": [{"interest": "restock bakery", "reason": "bought it before"},
                               {"interest": "try something new", "reason": "similar households buy it"}],
                   "tags": [{"tag": "white bread", "intent": 0}, {"tag": "green tea", "intent": 1}]}
    with pytest.raises(pydantic.ValidationError):
        target_json([("hot cocoa", False)], persona, schema)
    # a one-intent schema: the restock intent only, and tags with no intent index
    one = json.loads(target_json([("white bread", False), ("green tea", True)], persona,
                                 expert_schema(15, ("white bread", "green tea"), 1)))
    assert one == {"intents": [{"interest": "restock bakery", "reason": "bought it before"}],
                   "tags": [{"tag": "white bread"}, {"tag": "green tea"}]}


def test_curriculum_complement_is_the_highest_lift_partner():
    stats = TagStats.build(make(lift_rows()), TINY_T)
    chips = stats.types.index("potato chips")
    assert stats.types[type_complement(stats, chips, min_support=2)] == "tomato salsa"  # lift 2.6 beats 0.867
    assert type_complement(stats, chips, min_support=5) is None


def test_curriculum_rows_answer_from_the_catalogue(built, cj):
    rows, _ = built
    cur = [r for r in rows if r["meta"]["stage"] == "curriculum"]
    assert len(cur) == 4 and rows[:4] == cur  # the curriculum comes first
    cats = set(cj.items["category"].drop_nulls().to_list())
    for r in cur:
        ans = json.loads(r["completion"][0]["content"])["answer"]
        assert f"«{r['meta']['subject']}»" in r["prompt"][-1]["content"]
        if r["meta"]["task"] == "category":
            assert ans in cats


def test_train_data_command_writes_rows_and_refuses_a_leaking_cutoff(tmp_path):
    from typer.testing import CliRunner

    import app

    out = tmp_path / "sft.jsonl"
    res = CliRunner().invoke(app.app, ["train", "data", "--cutoffs", CUT, "--users-per-cutoff", "1", "--curriculum", "2",
                                       "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[res.output.index("{"):])  # llama.cpp may print a line of its own first
    lines = out.read_text().splitlines()
    assert report["rows"] == len(lines) == report["examples"] + report["curriculum"] and report["curriculum"] == 2
    assert report["cutoffs"] == [CUT] and report["eval_date"] == "2017-10-01"
    bad = CliRunner().invoke(app.app, ["train", "data", "--cutoffs", "2017-09-20", "--out", str(tmp_path / "x.jsonl")])
    assert bad.exit_code != 0 and "after the evaluation date 2017-10-01" in str(bad.exception or bad.output)


def test_train_data_takes_the_enum_size_and_tags_per_expert(tmp_path):
    """``--catalogue-size`` and ``--tags-per-expert`` reach the prompt's enum and the targets, as
    ``--set catalogue_size=N --set tags_per_expert=M`` reach the graph that is evaluated."""
    from typer.testing import CliRunner

    import app

    out = tmp_path / "sft.jsonl"
    res = CliRunner().invoke(app.app, ["train", "data", "--cutoffs", CUT, "--users-per-cutoff", "8", "--curriculum", "0",
                                       "--catalogue-size", "24", "--tags-per-expert", "7", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[res.output.index("{"):])
    assert report["catalogue_size"] == 24 and report["tags_per_expert"] == 7
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows and all(r["meta"]["catalogue_size"] == 24 and r["meta"]["tags_per_expert"] == 7 for r in rows)
    assert all(len(r["meta"]["vocabulary"]) == 24 for r in rows)
    for r in rows:
        answer = json.loads(r["completion"][0]["content"])
        assert RewardConfig().min_tags <= len(answer["tags"]) <= 7
        expert_schema(7, tuple(r["meta"]["vocabulary"]), 1).model_validate(answer)
        with pytest.raises(pydantic.ValidationError):  # the enum is the 24 phrases, the limit 7 tags
            expert_schema(7, tuple(r["meta"]["vocabulary"]), 1).model_validate(
                {**answer, "tags": answer["tags"] + [{"tag": "not in the enum"}]})
