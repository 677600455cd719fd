"""`app.py eval ...` and `app.py bench ...` commands. Each command imports its implementation lazily."""

import typer

from llm.cli_options import BACKEND_OPT, BASE_URL_OPT, MODEL_OPT

eval_app = typer.Typer(no_args_is_help=True)
bench_app = typer.Typer(no_args_is_help=True)


@bench_app.command("compression")
def bench_compression(
    dataset: str = typer.Option(None, "--dataset", "-d", help="Dataset spec (default completejourney)."),
    users: int = typer.Option(200, "--users", "-n", min=1, help="Users in the fixed-seed sample."),
    budget: int = typer.Option(4096, "--budget", "-b", min=0,
                               help="Token budget (default 4096: half the local model's 8k context)."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    min_weight: float = typer.Option(None, "--min-weight",
                                     help="Behaviour-level filter: keep types with at least this weight (0.25)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Hierarchical behaviour compression: tokens, per-stage reductions, budget fit, items retained."""
    import json

    from behavior.compress import CompressionConfig
    from evals.bench_compression import print_report, run_compression_bench

    cfg = CompressionConfig() if min_weight is None else CompressionConfig(min_weight=min_weight)
    res = run_compression_bench(dataset, users=users, budget=budget, seed=seed, config=cfg)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
    else:
        print_report(res)


@eval_app.command("retrieval")
def eval_retrieval(
    dataset: str = typer.Option("completejourney", "--dataset", "-d", help="Dataset spec."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report instead of the table."),
    out: str = typer.Option(None, "--out", "-o", help="Write the JSON report here (default: "
                            "<data dir>/evals/retrieval-<dataset>.json)."),
    cutoff: str = typer.Option(None, "--cutoff", help="Split date T, YYYY-MM-DD (default: calibrated per dataset)."),
    window: int = typer.Option(28, "--window", min=1, help="Test window in days after T."),
    min_events: int = typer.Option(20, "--min-events", min=1, help="Minimum purchases before T per user."),
    max_users: int = typer.Option(None, "--max-users", min=1, help="Evaluate a seeded sample of users."),
    epochs: int = typer.Option(None, "--epochs", min=1, help="Tower training epochs (default: RetrievalSettings.epochs)."),
    sasrec_epochs: int = typer.Option(10, "--sasrec-epochs", min=1, help="SASRec training epochs."),
    beta: float = typer.Option(0.6, "--beta", min=0.0, max=1.0, help="β of the fused variant."),
    seed: int = typer.Option(42, "--seed", help="Seed for the split sample, the towers and SASRec."),
    threads: int = typer.Option(None, "--threads", min=1, help="torch/faiss threads."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Retrain the towers even if a cached build exists."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide progress bars."),
    tune_tifu: bool = typer.Option(False, "--tune-tifu", help="Choose TIFU-KNN's parameters on the validation "
                                   "split in this run (default: the TifuParams defaults chosen there before)."),
    split_model: str = typer.Option(None, "--split-model", help="Channel split model JSON to serve with "
                                    "(default: fitted on the validation split in this run)."),
    methods: str = typer.Option(None, "--methods", help="Comma-separated subset of the methods (default: all)."),
) -> None:
    """Offline retrieval evaluation: baselines vs IntentRec variants on one temporal split."""
    import json

    from core.options import parse_date
    from core.paths import data_dir
    from evals.protocol import Protocol
    from evals.retrieval_eval import METHODS, render, run_retrieval_eval, write_report
    from evals.sasrec import SASRecConfig
    from retrieval.channel_split import ChannelSplit
    from retrieval.settings import RetrievalSettings

    chosen = tuple(m.strip() for m in methods.split(",")) if methods else METHODS
    unknown = sorted(set(chosen) - set(METHODS))
    if unknown:
        raise typer.BadParameter(f"unknown methods {unknown}; choose from {', '.join(METHODS)}", param_hint="--methods")

    if threads:
        import faiss
        import torch

        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
    protocol = Protocol(cutoff=parse_date(cutoff, "--cutoff"), window_days=window,
                        min_train_events=min_events, seed=seed, max_users=max_users)
    settings = RetrievalSettings(**({"epochs": epochs} if epochs else {}), beta=beta, seed=seed, num_threads=threads)
    report = run_retrieval_eval(dataset, protocol=protocol, settings=settings,
                                sasrec=SASRecConfig(epochs=sasrec_epochs, seed=seed), rebuild=rebuild,
                                progress=not no_progress, methods=chosen, tune_tifu=tune_tifu,
                                split_model=ChannelSplit.load(split_model) if split_model else None)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset)
    path = write_report(report, out or data_dir() / "evals" / f"retrieval-{safe}.json")
    if as_json:
        typer.echo(json.dumps(report, indent=1, default=str))
    else:
        render(report)
        typer.echo(f"report written to {path}")


def _emit(report: dict, *, out: str | None, as_json: bool, render) -> None:
    """Write the JSON report to ``out`` if given, then print it as JSON or as tables."""
    import json
    from pathlib import Path

    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    if as_json:
        typer.echo(json.dumps(report, indent=1, default=str))
    else:
        render(report)


@eval_app.command("tags")
def eval_tags(
    dataset: str = typer.Option(None, "--dataset", "-d", help="Dataset spec (default completejourney)."),
    users: int = typer.Option(30, "--users", "-n", min=1, help="Seeded sample of eligible users."),
    all_users: bool = typer.Option(False, "--all", "--all-users", help="Every eligible user instead of a sample."),
    cutoff: str = typer.Option(None, "--cutoff", help="T, YYYY-MM-DD (default: calibrated per dataset)."),
    window: int = typer.Option(28, "--window", min=1, help="Days after T in which targets are found."),
    min_events: int = typer.Option(20, "--min-events", min=1, help="Minimum purchases before T per user."),
    seed: int = typer.Option(42, "--seed", help="Seed of the user sample."),
    k: int = typer.Option(30, "--k", min=1, help="Tags scored per method (HR@K)."),
    recent_days: int = typer.Option(14, "--recent-days", min=1, help="'Recent purchase' window before T."),
    match_n: int = typer.Option(6, "--match-n", min=1, help="Size-matched n when no IntentRec run is scored."),
    baselines_only: bool = typer.Option(False, "--baselines-only", help="Score the baselines only (no graph)."),
    batch: str = typer.Option(None, "--batch", help="Evaluate this batch (resumed first if users are pending)."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Evaluate what is done; run nothing."),
    concurrency: int = typer.Option(1, "--concurrency", "-c", min=1, help="Users in flight at once (per worker)."),
    workers: int = typer.Option(1, "--workers", "-w", min=1,
                                help="Worker processes, one model each (local backend; the cores are divided)."),
    full_graph: bool = typer.Option(False, "--full-graph",
                                    help="Run the whole graph (items, explanations) instead of stopping after the tag judge."),
    backend: str = BACKEND_OPT,
    model: str = MODEL_OPT,
    base_url: str = BASE_URL_OPT,
    prompts: str = typer.Option(None, "--prompts", help="Prompt override folder."),
    personas: int = typer.Option(None, "--personas", help="K personas."),
    tags: int = typer.Option(None, "--tags", help="N final tags (default 30)."),
    items: int = typer.Option(None, "--items", help="Items to recommend per user."),
    settings: list[str] = typer.Option(None, "--set", help="A Context setting, KEY=VALUE (repeatable), e.g. "
                                       "history_budget=500; see agents/context.py."),
    factory: str = typer.Option(None, "--factory", help="module:function(RunLog) -> IntentRec instead of settings."),
    runlog: str = typer.Option(None, "--runlog", help="Run log file (default: INTENTREC_RUNLOG_PATH or <data dir>/runs.sqlite)."),
    out: str = typer.Option(None, "--out", "-o", help="Also write the JSON report here."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report instead of the tables."),
) -> None:
    """IntentRec's tags vs the next category bought (HR@30, discovery HR@30) beside 3 baselines."""

    from agents.context import parse_settings
    from core.options import parse_date
    from evals.tag_eval import TagEvalError, render, run_tag_eval

    given = {"--set": settings, "--users": users != 30, "--all": all_users, "--backend": backend, "--model": model,
             "--base-url": base_url, "--prompts": prompts, "--personas": personas, "--tags": tags, "--items": items,
             "--factory": factory, "--dataset": dataset, "--full-graph": full_graph}
    if batch and any(given.values()):
        raise TagEvalError("--batch takes users and settings from the batch; drop "
                           + ", ".join(o for o, v in given.items() if v))
    say = (lambda m: None) if as_json else (lambda m: typer.echo(m, err=True))
    overrides = {**parse_settings(settings),
                 **{k_: v for k_, v in {"n_personas": personas, "n_tags": tags, "n_items": items}.items() if v}}
    report = run_tag_eval(dataset, users=None if all_users else users, cutoff=parse_date(cutoff, "--cutoff"),
                          window_days=window, min_events=min_events, seed=seed, k=k, recent_days=recent_days,
                          match_n=match_n, baselines_only=baselines_only, batch_id=batch, runlog=runlog,
                          resume=not no_resume, concurrency=concurrency, workers=workers, full_graph=full_graph,
                          backend=backend, model=model,
                          base_url=base_url, prompts=prompts, factory=factory, overrides=overrides, say=say)
    _emit(report, out=out, as_json=as_json, render=render)


@eval_app.command("tags-compare")
def eval_tags_compare(
    batch: list[str] = typer.Option(..., "--batch", help="A finished 'eval tags' batch; give it twice."),
    name: list[str] = typer.Option(None, "--name", help="A label per batch, in the same order (default: the ids)."),
    runlog: str = typer.Option(None, "--runlog", help="Run log holding both batches (default: INTENTREC_RUNLOG_PATH or <data dir>/runs.sqlite)."),
    out: str = typer.Option(None, "--out", "-o", help="Also write the JSON report here."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report instead of the tables."),
) -> None:
    """Two tag-eval batches on the same users side by side (e.g. embedded vs vLLM): figures, paired
    hits, tag agreement and the model calls. Runs nothing."""

    from evals.tag_compare import render as render_compare
    from evals.tag_compare import run_compare

    say = (lambda m: None) if as_json else (lambda m: typer.echo(m, err=True))
    report = run_compare(batch, names=name or None, runlog=runlog, say=say)
    _emit(report, out=out, as_json=as_json, render=render_compare)


@eval_app.command("shopper")
def eval_shopper(
    batch: str = typer.Option(None, "--batch", help="A finished 'eval tags --full-graph' batch (default: the newest "
                              "batch in the run log)."),
    runlog: str = typer.Option(None, "--runlog", help="Run log holding the batch (default: INTENTREC_RUNLOG_PATH or <data dir>/runs.sqlite)."),
    dataset: str = typer.Option(None, "--dataset", "-d", help="Dataset spec (default: the batch's, else completejourney)."),
    cutoff: str = typer.Option(None, "--cutoff", help="T, YYYY-MM-DD (default: the batch's date; must agree with it)."),
    window: int = typer.Option(28, "--window", min=1, help="Days after T in which targets are found."),
    min_events: int = typer.Option(20, "--min-events", min=1, help="Minimum purchases before T per user."),
    out: str = typer.Option(None, "--out", "-o", help="Also write the JSON report here."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report instead of the tables."),
) -> None:
    """The items the full graph emitted vs TIFU-KNN and personal top-frequency cut to the same K per
    user (Recall, NDCG, HitRate on all / repeat / explore targets). Runs nothing."""

    from core.options import parse_date
    from evals.shopper_eval import render as render_shopper
    from evals.shopper_eval import run_shopper_eval

    say = (lambda m: None) if as_json else (lambda m: typer.echo(m, err=True))
    report = run_shopper_eval(batch, runlog=runlog, dataset=dataset, cutoff=parse_date(cutoff, "--cutoff"),
                              window_days=window, min_events=min_events, say=say)
    _emit(report, out=out, as_json=as_json, render=render_shopper)


@eval_app.command("explanations")
def eval_explanations(
    batch: str = typer.Option(None, "--batch", help="Audit every run of this batch."),
    run: list[str] = typer.Option(None, "--run", help="Audit this run (repeatable)."),
    prompts: str = typer.Option(None, "--prompts", help="Prompt folder whose examples count as copied text."),
    runlog: str = typer.Option(None, "--runlog", help="Run log file (default: INTENTREC_RUNLOG_PATH or <data dir>/runs.sqlite)."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report."),
) -> None:
    """Shown explanations that repeat a 4-gram, run over the limit, hold two sentences or copy the
    prompt's example, and the judge's pass rates, over logged runs."""
    import json

    from evals.explanation_audit import audit_runs, explainer_prompt_texts
    from prompts.registry import PromptRegistry
    from runlog.batches import BatchStore
    from runlog.store import RunLogError, open_runlog

    store = open_runlog(runlog)
    ids = [store.get_run(r)["run_id"] for r in run or []]
    if batch:
        ids += [i["run_id"] for i in BatchStore(store).items(BatchStore(store).resolve(batch))
                if i["status"] == "done" and i["run_id"]]
    if not ids:
        raise RunLogError("choose the runs: --batch BATCH_ID or --run RUN_ID")
    rep = audit_runs(store, ids, explainer_prompt_texts(PromptRegistry([prompts] if prompts else None)))
    if as_json:
        typer.echo(json.dumps(rep, indent=2, ensure_ascii=False))
        return
    j = rep["judge"]
    typer.echo(f"{rep['runs']} runs, {rep['shown_explanations']} shown explanations {rep['by_source']}: "
               f"{rep['degenerate_shown']} degenerate {rep['by_defect']}")
    for kind in ("tag", "explanation"):
        typer.echo(f"judge, {kind}s: {j[kind]['passed']} of {j[kind]['judged']} passed")
    for ex in rep["examples"]:
        typer.echo(f"  {ex['run_id'][:8]} {ex['item_id']}: {ex['explanation']!r} {ex['defects']}")


@bench_app.command("llm")
def bench_llm(
    reps: int = typer.Option(7, "--reps", min=1, help="Measured repetitions per path and mode."),
    max_tokens: int = typer.Option(96, "--max-tokens", min=1, help="Completion token limit."),
    mode: str = typer.Option("both", "--mode", help="cold (KV cache cleared per call), warm, or both."),
    threads: int = typer.Option(None, "--threads", min=1, help="llama.cpp threads (default: the physical cores)."),
    model_path: str = typer.Option(None, "--model-path", help="GGUF file (default: embedded SmolLM2-135M)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Local LLM tokens/s through IntentRec's structured_call against llama.cpp called directly."""
    import json

    from evals.bench_llm import print_llm_bench, run_llm_bench
    from llm.settings import LLMSettings

    modes = ("cold", "warm") if mode == "both" else (mode,)
    settings = LLMSettings.load(backend="local", n_threads=threads, model_path=model_path)
    res = run_llm_bench(settings, reps=reps, max_tokens=max_tokens, modes=modes)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
    else:
        print_llm_bench(res)


@bench_app.command("system")
def bench_system(
    sections: str = typer.Option(",".join(("latency", "overhead", "prefix", "throughput", "retrieval", "memory", "llm")),
                                 "--sections", help="Comma-separated subset of: latency, overhead, prefix, "
                                 "throughput (or throughput-scripted, throughput-server), throughput-local (in-process "
                                 "llama.cpp at the server context), throughput-vllm (not in the default: needs 'python app.py llm vllm setup'), retrieval, memory, llm."),
    users: int = typer.Option(2, "--users", "-n", min=1, help="Local-backend users to run for latency (without --batch)."),
    batch: str = typer.Option(None, "--batch", help="Take local latency/overhead from this finished batch's runs."),
    runlog: str = typer.Option(None, "--runlog", help="Run log holding --batch (default: the configured run log)."),
    dataset: str = typer.Option(None, "--dataset", "-d", help="Dataset spec (default completejourney)."),
    now: str = typer.Option("2017-10-01", "--now", help="Environment date of the benchmark users."),
    index_cutoff: str = typer.Option(None, "--index-cutoff", help="Retriever trained before this date (default: --now)."),
    concurrency: str = typer.Option("1,2,4,8", "--concurrency", help="Batch concurrency levels for throughput."),
    delay_ms: float = typer.Option(100.0, "--delay-ms", min=0.0, help="Scripted model's delay per call."),
    slow_delay_ms: float = typer.Option(500.0, "--slow-delay-ms", min=0.0,
                                        help="Also run the shipped run log at this longer delay (0: skip)."),
    scripted_users: int = typer.Option(16, "--scripted-users", min=1, help="Users per level, scripted throughput."),
    server_users: int = typer.Option(3, "--server-users", min=1,
                                     help="Minimum users per level against the llama.cpp and vLLM servers (at least the level)."),
    vllm_users: int = typer.Option(None, "--vllm-users", min=1,
                                   help="Users per level against vLLM (default: --server-users); its users take seconds."),
    overhead_users: int = typer.Option(8, "--overhead-users", min=1, help="Users for the zero-latency scripted runs."),
    prefix_user: str = typer.Option("1", "--prefix-user", help="User whose real prompts the prefix-cache test uses."),
    prefix_reps: int = typer.Option(1, "--prefix-reps", min=1, help="Planner+experts sequences per prefix mode."),
    llm_reps: int = typer.Option(5, "--llm-reps", min=1, help="Repetitions of the structured-vs-raw LLM bench."),
    threads: int = typer.Option(None, "--threads", min=1, help="llama.cpp threads (default: the physical cores)."),
    profile: bool = typer.Option(True, "--profile/--no-profile", help="Sample the scripted runs with py-spy."),
    out: str = typer.Option(None, "--out", "-o", help="Also write the JSON report here."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """System figures from one run: latency by node, orchestration overhead, prefix cache, throughput, retrieval, memory."""
    import json
    import sys
    from pathlib import Path

    from evals.bench_system import print_report, run_system_bench

    levels = tuple(int(x) for x in concurrency.split(",") if x.strip())
    res = run_system_bench(
        sections=[x.strip() for x in sections.split(",") if x.strip()], users=users, batch=batch, runlog=runlog,
        dataset=dataset, now=now, index_cutoff=index_cutoff, levels=levels, scripted_users=scripted_users,
        delay_ms=delay_ms, slow_delay_ms=slow_delay_ms, server_users=server_users, vllm_users=vllm_users, overhead_users=overhead_users, prefix_user=prefix_user,
        prefix_reps=prefix_reps, llm_reps=llm_reps, threads=threads, profile=profile,
        argv=sys.argv[sys.argv.index("system") + 1:] if "system" in sys.argv else [],
        on_section=lambda name, dt: typer.echo(f"bench system: section {name} took {dt:.1f} s", err=True))
    text = json.dumps(res, indent=2, default=str)
    if out:
        Path(out).write_text(text + "\n", encoding="utf-8")
    if as_json:
        typer.echo(text)
    else:
        print_report(res)
