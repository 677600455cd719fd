"""Judge replay: re-run only the judge on logged judge requests, never the generator agents.

RecGPT's judge is re-run on logged outputs whenever its prompt or model changes. ``replay_runs``
takes each selected run's ``graph`` verdict set from the run log (the judge requests of every judge
pass, exactly as the graph built them, with the verdicts it gave), grades the same requests again
with :func:`judges.evaluate.judge_many` (rules, then the judge model in ``joint`` or
``per_dimension`` mode, then the senior reviewer: the functions the judge subgraph runs), and:

* records the replay as a run of kind ``replay`` linked to the original (``parent_run_id``), with
  every judge call's rendered prompt, raw and parsed output (the same call sink as the graph);
* writes a new verdict set (``source="replay"``, ``parent_set_id`` = the original set,
  ``producer_run_id`` = the replay run) keyed like the original by (pass, subject);
* reports agreement with the original verdicts: per ``kind.dimension`` and Cohen's kappa on the
  grade (``judges.agreement``), and, when people have labelled the run (``judge import``), the
  agreement of both the original and the replayed judge with them.

Only the judge model is called; no planner, expert, arbiter or explainer. Mode and threshold
default to the original set's. Pass ``prompts`` (a registry with an override folder) or another
model to see what a new judge prompt or model would change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel

from judges.agreement import compare_labels, compare_verdicts
from judges.evaluate import check_mode, judge_many
from judges.schemas import JudgeRequest
from llm.structured import model_id
from prompts.registry import PromptRegistry
from runlog.recorder import Recorder
from runlog.store import RunLog, RunLogError, plain


@dataclass
class RunReplay:
    run_id: str
    replay_run_id: str
    set_id: str
    parent_set_id: str
    requests: int
    skipped: int
    model_calls: int
    agreement: dict[str, Any]
    human: dict[str, Any] | None = None


@dataclass
class ReplayReport:
    runs: list[RunReplay] = field(default_factory=list)
    agreement: dict[str, Any] = field(default_factory=dict)
    human: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"runs": [asdict(r) for r in self.runs], "agreement": self.agreement, "human": self.human}


def select_runs(store: RunLog, *, run: str | None = None, since: str | None = None,
                all_runs: bool = False) -> list[str]:
    """Run ids with logged judge verdicts: one run (id or prefix), runs started on or after
    ``since`` (ISO date), or all; oldest first. Replays are never selected."""
    if sum(x is not None and x is not False for x in (run, since, all_runs or None)) != 1:
        raise RunLogError("choose exactly one of --run RUN_ID, --since DATE, --all")
    if run is not None:
        rid = store.resolve(run)
        if store.graph_set(rid) is None:
            raise RunLogError(f"run {rid} has no logged judge verdicts (it is a {store.get_run(rid)['kind']} run)")
        return [rid]
    rows = store.runs(since=since)
    out = [r["run_id"] for r in reversed(rows) if r["kind"] != "replay" and store.graph_set(r["run_id"])]
    if not out:
        raise RunLogError(f"no logged runs with judge verdicts{f' since {since}' if since else ''} in {store.path}")
    return out


def verdict_lookup(store: RunLog, run_ids: list[str], against: str = "graph") -> Any:
    """``(run_id, pass_no, subject_id) -> verdict dict`` from each run's graph set, its latest
    replay set, or one named set id."""
    table: dict[tuple[str, int, str], dict[str, Any]] = {}
    for rid in run_ids:
        if against in ("graph", "replay"):
            s = store.graph_set(rid) if against == "graph" else store.latest_set(rid, "replay")
        else:
            s = store.get_set(against)
            if s["run_id"] != rid:
                continue
        if s is None:
            continue
        for j in store.judgements(s["set_id"]):
            table[(rid, j["pass_no"], j["subject_id"])] = j["verdict"]
    return lambda run_id, pass_no, subject_id: table.get((run_id, int(pass_no), subject_id))


def human_agreement(store: RunLog, run_ids: list[str], against: str = "graph") -> dict[str, Any] | None:
    labels = store.labels(run_ids)
    if not labels:
        return None
    return {"labels": len(labels), **compare_labels(labels, verdict_lookup(store, run_ids, against))}


def replay_run(store: RunLog, run_id: str, *, model: BaseChatModel, prompts: PromptRegistry | None = None,
               mode: str | None = None, threshold: float | None = None, max_attempts: int = 3) -> RunReplay:
    prompts = prompts if prompts is not None else PromptRegistry()
    run = store.get_run(run_id)
    rid = run["run_id"]
    original = store.graph_set(rid)
    if original is None:
        raise RunLogError(f"run {rid} has no logged judge verdicts")
    mode = check_mode(mode or original.get("mode") or "joint")
    threshold = float(threshold if threshold is not None else (original.get("threshold") or 0.75))
    judged = store.judgements(original["set_id"])
    judge_refs = {n: r for n, r in prompts.refs().items() if n.startswith("judge")}
    replay_id = store.start_run(
        kind="replay", parent_run_id=rid, user_id=run.get("user_id"), dataset=run.get("dataset"),
        context={"models": {"judge": model_id(model)}, "prompts": judge_refs,
                 "prompt_dirs": [str(d) for d in prompts.dirs],
                 "settings": {"judge_mode": mode, "judge_s_threshold": threshold, "max_attempts": max_attempts}},
        request={"replay_of_set": original["set_id"]})
    recorder = Recorder(store, replay_id)
    try:
        set_id = store.create_verdict_set(run_id=rid, source="replay", producer_run_id=replay_id,
                                          parent_set_id=original["set_id"], judge_model=model_id(model), mode=mode,
                                          threshold=threshold, prompts=judge_refs)
        by_pass: dict[int, list[dict[str, Any]]] = {}
        for j in judged:
            by_pass.setdefault(j["pass_no"], []).append(j)
        pairs, calls, skipped, total = [], 0, 0, 0
        for pass_no, rows in sorted(by_pass.items()):
            reqs = [JudgeRequest.model_validate(j["request"]) for j in rows if j.get("request")]
            skipped += len(rows) - len(reqs)
            verdicts, records = judge_many(reqs, model=model, prompts=prompts, mode=mode, threshold=threshold,
                                           max_attempts=max_attempts, sink=recorder.on_call)
            calls += len(records)
            total += len(reqs)
            by_req = {r.subject_id: r for r in reqs}
            store.add_judgements(set_id, pass_no, [{"subject_id": sid, "node": "replay", "request": by_req[sid],
                                                    "verdict": v} for sid, v in verdicts.items()])
            for j in rows:
                if j["subject_id"] in verdicts and j.get("verdict"):
                    pairs.append((j["verdict"], plain(verdicts[j["subject_id"]])))
        report = compare_verdicts(pairs)
        human = None
        if store.labels([rid]):
            human = {"original": human_agreement(store, [rid], original["set_id"]),
                     "replay": human_agreement(store, [rid], set_id)}
        store.set_report(set_id, {"agreement": report, "human": human})
        store.finish_run(replay_id, status="ok", output={"set_id": set_id, "requests": total, "model_calls": calls,
                                                         "agreement": report})
    except BaseException as e:
        store.finish_run(replay_id, status="error", error=f"{type(e).__name__}: {e}")
        raise
    return RunReplay(run_id=rid, replay_run_id=replay_id, set_id=set_id, parent_set_id=original["set_id"],
                     requests=total, skipped=skipped, model_calls=calls, agreement=report, human=human)


def replay_runs(store: RunLog, run_ids: list[str], *, model: BaseChatModel, prompts: PromptRegistry | None = None,
                mode: str | None = None, threshold: float | None = None, max_attempts: int = 3) -> ReplayReport:
    """Replay the judge on each run; the report pools agreement over all of them."""
    report = ReplayReport()
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for rid in run_ids:
        r = replay_run(store, rid, model=model, prompts=prompts, mode=mode, threshold=threshold,
                       max_attempts=max_attempts)
        report.runs.append(r)
        orig = {(j["pass_no"], j["subject_id"]): j["verdict"] for j in store.judgements(r.parent_set_id)}
        for j in store.judgements(r.set_id):
            if orig.get((j["pass_no"], j["subject_id"])):
                pairs.append((orig[(j["pass_no"], j["subject_id"])], j["verdict"]))
    report.agreement = compare_verdicts(pairs)
    ids = [r.run_id for r in report.runs]
    if store.labels(ids):
        report.human = {"original": human_agreement(store, ids, "graph"),
                        "replay": human_agreement(store, ids, "replay")}
    return report
