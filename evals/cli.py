"""`app.py eval ...` and `app.py bench ...` commands. Each command imports its implementation lazily."""

import typer

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
    epochs: int = typer.Option(3, "--epochs", min=1, help="Tower training epochs."),
    sasrec_epochs: int = typer.Option(10, "--sasrec-epochs", min=1, help="SASRec training epochs."),
    beta: float = typer.Option(0.6, "--beta", min=0.0, max=1.0, help="β of the fused variant."),
    seed: int = typer.Option(42, "--seed", help="Seed for the split sample, the towers and SASRec."),
    threads: int = typer.Option(None, "--threads", min=1, help="torch/faiss threads."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Retrain the towers even if a cached build exists."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide progress bars."),
) -> None:
    """Offline retrieval evaluation: baselines vs IntentRec variants on one temporal split."""
    import json

    from core.options import parse_date
    from core.paths import data_dir
    from evals.protocol import Protocol
    from evals.retrieval_eval import render, run_retrieval_eval, write_report
    from evals.sasrec import SASRecConfig
    from retrieval.settings import RetrievalSettings

    if threads:
        import faiss
        import torch

        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
    protocol = Protocol(cutoff=parse_date(cutoff, "--cutoff"), window_days=window,
                        min_train_events=min_events, seed=seed, max_users=max_users)
    settings = RetrievalSettings(epochs=epochs, beta=beta, seed=seed, num_threads=threads)
    report = run_retrieval_eval(dataset, protocol=protocol, settings=settings,
                                sasrec=SASRecConfig(epochs=sasrec_epochs, seed=seed), rebuild=rebuild,
                                progress=not no_progress)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset)
    path = write_report(report, out or data_dir() / "evals" / f"retrieval-{safe}.json")
    if as_json:
        typer.echo(json.dumps(report, indent=1, default=str))
    else:
        render(report)
        typer.echo(f"report written to {path}")


@bench_app.command("llm")
def bench_llm(
    reps: int = typer.Option(7, "--reps", min=1, help="Measured repetitions per path and mode."),
    max_tokens: int = typer.Option(96, "--max-tokens", min=1, help="Completion token limit."),
    mode: str = typer.Option("both", "--mode", help="cold (KV cache cleared per call), warm, or both."),
    threads: int = typer.Option(None, "--threads", min=1, help="llama.cpp threads (default: half the cores)."),
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
