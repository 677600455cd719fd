"""The learning loop's training set, derived from the behaviour log with no leakage ([6/7], step 1).

RecGPT aligns its model to the tag task on examples built from logs: the prompt the expert sees, and
as target the tags of what the user bought next. Here:

* **Cutoffs.** Several dates ``c`` before the evaluation date ``T`` (default: every 4 weeks from
  2017-04-02 to 2017-09-03 on completejourney). For each, the users with at least ``min_events``
  purchases before ``c`` and one in ``[c, c + window)``, a seeded sample of them. A cutoff whose
  window reaches ``T`` is refused, so every target lies strictly before ``T``.
* **Prompts** are exactly what the graph sends the embedded model for an expert (its compact prompt
  sizes, ``agents.context.SMALL_MODEL_PROMPT``): the shared context
  built by ``graphs.prepare.prepare_user`` as of ``c`` (history, summary, environment, the candidate
  tools), the persona the small-model profile uses (``judges.personas.category_personas``), the
  expert template's variables from ``agents.expert.expert_variables``, and the schema hint where the local
  backend puts it (``LocalChatModel.prepare``). Nothing here writes a prompt of its own.
* **Targets** are in the expert's output schema (validated against it, with the catalogue enum): the
  product types the household bought in the window that are in the expert's enum. Each persona gets
  the types of its own category first, then a round-robin share of the rest (new categories
  first), so the K experts of a user learn different lists instead of one list K times. A list
  shorter than the reward's length gate (``RewardConfig.min_tags``) is topped up from the household's
  other bought types, and a persona whose household bought fewer is skipped and counted: SFT must not
  teach lists that the self-training round and GRPO then score 0.
* **Curriculum** (V1's first stage): short tasks from the catalogue before the main set, the category
  of a product type and a product type's complement (highest lift, at least 20 shared baskets), both
  from data before the earliest cutoff, rendered with the ``curriculum`` template.

Rows are prompt/completion pairs in the conversational format TRL's trainers read, plus ``meta``
(for a task row: the user, cutoff, window, persona, target counts and the expert's enum, which the
self-training round needs to constrain its samples the way the graph does).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from agents.context import SMALL_MODEL_PROMPT, Context, Environment
from agents.expert import expert_schema, expert_variables, intents_of
from behavior.schema import Dataset
from graphs.prepare import prepare_user
from graphs.recommend import top_categories
from judges.personas import category_personas
from learning.reward import RewardConfig
from prompts.registry import PromptRegistry
from tools.tag_stats import MIN_SUPPORT, TagStats, product_type, type_lift

#: the default cutoffs on completejourney: every 4 weeks before the evaluation date 2017-10-01
DEFAULT_CUTOFFS = ("2017-04-02", "2017-04-30", "2017-05-28", "2017-06-25", "2017-07-23", "2017-08-20")
DEFAULT_T = "2017-10-01"


class LeakageError(ValueError):
    """A cutoff's target window reaches the evaluation date T."""


@dataclass
class BuildConfig:
    cutoffs: Sequence[str] = DEFAULT_CUTOFFS
    #: the evaluation date: no target on or after it
    eval_date: str = DEFAULT_T
    window_days: int = 28
    users_per_cutoff: int = 50
    min_events: int = 20
    n_personas: int = 3
    tags_per_expert: int = SMALL_MODEL_PROMPT["tags_per_expert"]
    #: phrases in the expert's enum (the candidate tools' first N); evaluate with the same setting
    catalogue_size: int = SMALL_MODEL_PROMPT["catalogue_size"]
    seed: int = 42
    curriculum: int = 200  # curriculum examples (half each task); 0: none
    #: a target shorter than this is topped up from the household's other bought types, and a persona
    #: whose household bought fewer is skipped: the reward's length gate (``RewardConfig.min_tags``),
    #: so SFT does not teach lists that self-training and GRPO then score 0
    min_targets: int = RewardConfig.min_tags


@dataclass
class BuildStats:
    examples: int = 0
    curriculum: int = 0
    users: int = 0
    #: personas with no bought product type in the enum (no target): counted, not written
    skipped_no_target: int = 0
    #: personas whose household bought fewer than ``min_targets`` types in the enum: counted, not written
    skipped_short_target: int = 0
    per_cutoff: dict[str, int] = field(default_factory=dict)
    target_last_ts: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _date(s: str | datetime) -> datetime:
    return s if isinstance(s, datetime) else datetime.fromisoformat(str(s))


def check_no_leakage(cutoffs: Iterable[str | datetime], window_days: int, eval_date: str | datetime) -> None:
    """Raise :class:`LeakageError` when a cutoff's window ``[c, c + window)`` reaches ``eval_date``."""
    t = _date(eval_date)
    for c in cutoffs:
        end = _date(c) + timedelta(days=window_days)
        if end > t:
            raise LeakageError(f"cutoff {_date(c):%Y-%m-%d}: its {window_days}-day target window ends "
                               f"{end:%Y-%m-%d}, after the evaluation date {t:%Y-%m-%d}")


def sample_users(dataset: Dataset, cutoff: datetime, window_days: int, *, min_events: int, n: int,
                 seed: int) -> list[str]:
    """A seeded sample of the users with ``min_events`` purchases before ``cutoff`` and one in the window."""
    from evals.protocol import seeded_sample
    from evals.tag_eval import eligible_users

    users = eligible_users(dataset, cutoff, cutoff + timedelta(days=window_days), min_events=min_events,
                           behaviors=("purchase",))
    return seeded_sample(users, n, seed)


def _window_rows(dataset: Dataset, user_id: str, start: datetime, end: datetime) -> pl.DataFrame:
    return (dataset.behaviors.filter((pl.col("user_id") == str(user_id)) & (pl.col("behavior") == "purchase")
                                     & (pl.col("ts") >= start) & (pl.col("ts") < end))
            .join(dataset.items.select("item_id", "title", pl.col("category").fill_null("")), on="item_id"))


def window_categories(dataset: Dataset, user_id: str, start: datetime, end: datetime) -> set[str]:
    """Every category the user bought in ``[start, end)`` (what the reward's accuracy recalls)."""
    return set(_window_rows(dataset, user_id, start, end)["category"].to_list()) - {""}


def window_types(dataset: Dataset, user_id: str, start: datetime, end: datetime) -> pl.DataFrame:
    """The product types the user bought in ``[start, end)``: phrase, category, first purchase time."""
    rows = _window_rows(dataset, user_id, start, end).with_columns(pl.col("title").map_elements(product_type, return_dtype=pl.Utf8).alias("phrase"))
    return (rows.filter(pl.col("phrase").is_not_null()).group_by("phrase")
            .agg(pl.col("category").first(), pl.col("ts").min().alias("first_ts")).sort("first_ts", "phrase"))


def persona_targets(personas: Sequence[dict], persona_categories: Sequence[str], bought: Sequence[tuple[str, str, bool]],
                    per_persona: int, min_per_persona: int = 1) -> list[list[tuple[str, bool]]]:
    """Each persona's target types: ``bought`` is (phrase, category, is_new_category) in purchase
    order. A persona gets its own category's types first, then its round-robin share of the rest, new
    categories first; a list still shorter than ``min_per_persona`` is topped up from the other
    bought types (new categories first), so that a target can pass the reward's length gate; at most
    ``per_persona``. Returns (phrase, is_new) per persona."""
    own = [[(p, new) for p, c, new in bought if c == cat] for cat in persona_categories]
    taken = {p for lst in own for p, _ in lst}
    rest = [(p, new) for p, c, new in bought if p not in taken]
    rest.sort(key=lambda x: not x[1])  # new categories first, purchase order kept
    pool = sorted(((p, new) for p, _, new in bought), key=lambda x: not x[1])
    out = []
    for i in range(len(personas)):
        tags = (own[i] + rest[i::len(personas)])[:per_persona]
        if len(tags) < min_per_persona:
            have = {p for p, _ in tags}
            tags += [t for t in pool if t[0] not in have][:min(min_per_persona, per_persona) - len(tags)]
        out.append(tags)
    return out


def target_json(tags: Sequence[tuple[str, bool]], persona: dict, schema: Any) -> str:
    """The expert's answer for ``tags``: intent 0 restocks the persona's own kind of product, intent 1
    (when a tag is new to the household) tries something new; validated against ``schema``. A schema
    of one intent (``Context.intents_per_expert``) gets the first, and tags with no intent index."""
    intents = [{"interest": f"restock {persona['focus'].removeprefix('buys ')}"[:40], "reason": "bought it before"}]
    two = intents_of(schema) > 1
    if any(new for _, new in tags) and two:
        intents.append({"interest": "try something new"[:40], "reason": "similar households buy it"})
    obj = {"intents": intents,
           "tags": [{"tag": t, "intent": 1 if new and len(intents) > 1 else 0} if two else {"tag": t} for t, new in tags]}
    schema.model_validate(obj)
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _local_prepare() -> Callable[..., Any]:
    from llm.local import LocalChatModel

    model = LocalChatModel()
    return model.prepare


def build_examples(dataset: Dataset, config: BuildConfig, *, prompts: PromptRegistry | None = None,
                   count_tokens: Callable[[str], int] | None = None,
                   prepare_call: Callable[..., Any] | None = None,
                   progress: Callable[[str], None] | None = None) -> tuple[list[dict], BuildStats]:
    """Rows ``{"prompt": [messages], "completion": [assistant message], "meta": {...}}`` and counts.
    ``prepare_call`` renders the final messages as the local backend does (default: ``LocalChatModel.prepare``)."""
    check_no_leakage(config.cutoffs, config.window_days, config.eval_date)
    prompts = prompts or PromptRegistry()
    prepare_call = prepare_call or _local_prepare()
    stats = BuildStats()
    rows: list[dict] = []
    last_ts: datetime | None = None
    for ci, c in enumerate(sorted(_date(c) for c in config.cutoffs)):
        end = c + timedelta(days=config.window_days)
        ctx = Context(models={}, prompts=prompts, env=Environment.at(c), n_personas=config.n_personas,
                      **{**SMALL_MODEL_PROMPT, "tags_per_expert": config.tags_per_expert,
                         "catalogue_size": config.catalogue_size},
                      tag_vocabulary="catalogue", persona_source="categories")
        users = sample_users(dataset, c, config.window_days, min_events=config.min_events,
                             n=config.users_per_cutoff, seed=config.seed + ci)
        tstats = TagStats.build(dataset, c)
        type_ix = {t: i for i, t in enumerate(tstats.types)}
        n_before = len(rows)
        for u in users:
            prepared = prepare_user(dataset, u, ctx, count_tokens=count_tokens)
            vocab = tuple(prepared.tag_vocabulary)
            if not vocab:
                continue
            top = top_categories(dataset, u, c)
            personas = category_personas(top, config.n_personas, set())
            bought_before = _categories_before(tstats, u)
            window_cats = window_categories(dataset, u, c, end)
            wt = window_types(dataset, u, c, end).filter(pl.col("phrase").is_in(list(vocab)))
            bought = [(p, cat, cat not in bought_before) for p, cat in wt.select("phrase", "category").iter_rows()]
            if wt.height:
                t_max = wt["first_ts"].max()
                last_ts = t_max if last_ts is None or t_max > last_ts else last_ts
            schema = expert_schema(config.tags_per_expert, vocab, ctx.intents_per_expert)
            per = persona_targets(personas, [cat for cat, _ in top[:len(personas)]], bought, config.tags_per_expert,
                                  min_per_persona=config.min_targets)
            stats.users += 1
            for persona, tags in zip(personas, per, strict=True):
                if len(tags) < max(1, config.min_targets):
                    if tags:
                        stats.skipped_short_target += 1
                    else:
                        stats.skipped_no_target += 1
                    continue
                msgs = prompts.get("expert").render(**expert_variables(ctx, prepared.shared_context, persona,
                                                                       vocabulary=vocab))
                call = prepare_call(msgs, json_schema=schema.model_json_schema())
                rows.append({"prompt": call.messages,
                             "completion": [{"role": "assistant", "content": target_json(tags, persona, schema)}],
                             "meta": {"stage": "task", "user_id": str(u), "cutoff": f"{c:%Y-%m-%d}",
                                      "window_end": f"{end:%Y-%m-%d}", "persona": persona["name"],
                                      "targets": len(tags), "new_targets": sum(1 for _, n in tags if n),
                                      "vocabulary": list(vocab), "intents": ctx.intents_per_expert,
                                      "catalogue_size": config.catalogue_size,
                                      "tags_per_expert": config.tags_per_expert,
                                      # what the reward needs (learning.reward): the window's categories,
                                      # those new to the household, each phrase's category, recent buys
                                      "target_categories": sorted(window_cats),
                                      "new_categories": sorted(window_cats - bought_before),
                                      "phrase_categories": {p: tstats.type_category[type_ix[p]] if p in type_ix else ""
                                                            for p in vocab},
                                      "recent": list(prepared.recent_purchases)}})
        stats.per_cutoff[f"{c:%Y-%m-%d}"] = len(rows) - n_before
        if progress:
            progress(f"cutoff {c:%Y-%m-%d}: {len(users)} users, {len(rows) - n_before} examples")
    stats.examples = len(rows)
    stats.target_last_ts = last_ts.isoformat() if last_ts else None
    if config.curriculum:
        first = min(_date(c) for c in config.cutoffs)
        cur = curriculum_examples(TagStats.build(dataset, first), config.curriculum, prompts=prompts,
                                  prepare_call=prepare_call, seed=config.seed)
        stats.curriculum = len(cur)
        rows = cur + rows
    return rows, stats


def _categories_before(stats: TagStats, user_id: str) -> set[str]:
    r = stats.user_row(user_id)
    if r is None:
        return set()
    return {stats.categories[c] for c in stats.user_cat.getrow(r).indices.tolist()}


# ----- curriculum ------------------------------------------------------------------------------------

def type_complement(stats: TagStats, t: int, min_support: int = MIN_SUPPORT) -> int | None:
    """The type with the highest lift over ``t`` in another category, with ``min_support`` shared baskets."""
    row = stats.cooc.getrow(t)
    best, best_lift = None, 0.0
    for b, both in zip(row.indices.tolist(), row.data.tolist(), strict=True):
        if b == t or both < min_support or stats.type_category[b] == stats.type_category[t]:
            continue
        lift = type_lift(stats, t, b, both)
        if lift > best_lift or (lift == best_lift and best is not None and stats.types[b] < stats.types[best]):
            best, best_lift = b, lift
    return best


def curriculum_examples(stats: TagStats, n: int, *, prompts: PromptRegistry, prepare_call: Callable[..., Any],
                        seed: int = 42) -> list[dict]:
    """``n`` easy examples (half "category of", half "complement of") over the most bought types."""
    from pydantic import create_model

    popular = np.argsort(-stats.type_baskets, kind="stable")
    rng = np.random.default_rng(seed)
    pool = popular[: max(4 * n, 50)].tolist()
    picked = [pool[i] for i in sorted(rng.choice(len(pool), size=min(n, len(pool)), replace=False).tolist())]
    tmpl = prompts.get("curriculum")
    out = []
    for i, t in enumerate(picked):
        phrase = stats.types[t]
        if i % 2 == 0:
            task, answer = "category", stats.type_category[t]
            question = "Which shop category does this product type belong to?"
        else:
            comp = type_complement(stats, t)
            if comp is None:
                continue
            task, answer = "complement", stats.types[comp]
            question = "Name a product type from another category that is often bought in the same basket."
        schema = create_model("CurriculumAnswer", answer=(str, ...))
        msgs = tmpl.render(question=question, subject=phrase)
        call = prepare_call(msgs, json_schema=schema.model_json_schema())
        out.append({"prompt": call.messages,
                    "completion": [{"role": "assistant",
                                    "content": json.dumps({"answer": answer}, ensure_ascii=False, separators=(",", ":"))}],
                    "meta": {"stage": "curriculum", "task": task, "subject": phrase}})
    return out


def read_jsonl(path: Any) -> list[dict]:
    """The rows of a JSONL file written by ``write_jsonl`` (blank lines skipped)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(rows: Iterable[dict], path: Any) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


__all__ = ["BuildConfig", "BuildStats", "DEFAULT_CUTOFFS", "LeakageError", "build_examples", "check_no_leakage",
           "curriculum_examples", "persona_targets", "read_jsonl", "target_json", "type_complement", "window_types", "write_jsonl"]
