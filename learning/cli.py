"""`app.py train ...`: the learning loop's commands ([6/7]). Each prints its cost (examples, tokens,
wall time) and, with ``--json``, one JSON object."""

from __future__ import annotations

import contextlib
import json
import sys
import time

import typer

train_app = typer.Typer(no_args_is_help=True)


def _emit(obj: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(obj, indent=2))
    else:
        for k, v in obj.items():
            typer.echo(f"{k}: {v}")


@train_app.command("data")
def train_data(
    out: str = typer.Option(..., "--out", "-o", help="JSONL file to write (prompt/completion rows with meta)."),
    dataset: str = typer.Option("completejourney", "--dataset", "-d", help="Dataset spec."),
    cutoffs: str = typer.Option(None, "--cutoffs", help="Comma-separated YYYY-MM-DD cutoffs (default: every 4 weeks "
                                "from 2017-04-02 to 2017-08-20)."),
    eval_date: str = typer.Option("2017-10-01", "--eval-date", help="T: no target window may reach it."),
    window: int = typer.Option(28, "--window", min=1, help="Days after a cutoff whose purchases are the targets."),
    users: int = typer.Option(50, "--users-per-cutoff", min=1, help="Seeded sample of eligible users per cutoff."),
    curriculum: int = typer.Option(200, "--curriculum", min=0, help="Curriculum rows (catalogue questions)."),
    catalogue_size: int = typer.Option(None, "--catalogue-size", min=1, help="Phrases in the expert's enum "
                                       "(default: the small-model prompt's); evaluate with --set catalogue_size=N."),
    tags_per_expert: int = typer.Option(None, "--tags-per-expert", min=1, help="Most tags per expert answer and "
                                        "target (default: the small-model prompt's); --set tags_per_expert=N."),
    seed: int = typer.Option(42, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Build the SFT set from the log (learning/dataset.py): expert prompts as the graph renders them."""
    from behavior.adapters import load_dataset_cached
    from learning.dataset import DEFAULT_CUTOFFS, BuildConfig, build_examples, write_jsonl

    t0 = time.perf_counter()
    cfg = BuildConfig(cutoffs=tuple(c.strip() for c in cutoffs.split(",")) if cutoffs else DEFAULT_CUTOFFS,
                      eval_date=eval_date, window_days=window, users_per_cutoff=users, curriculum=curriculum, seed=seed,
                      **{k: v for k, v in {"catalogue_size": catalogue_size, "tags_per_expert": tags_per_expert}.items()
                         if v is not None})
    rows, stats = build_examples(load_dataset_cached(dataset), cfg,
                                 progress=None if as_json else (lambda s: typer.echo(s, err=True)))
    n = write_jsonl(rows, out)
    _emit({"out": out, "rows": n, **stats.as_dict(), "cutoffs": list(cfg.cutoffs), "eval_date": eval_date,
           "catalogue_size": cfg.catalogue_size, "tags_per_expert": cfg.tags_per_expert, "seed": seed,
           "wall_s": round(time.perf_counter() - t0, 1)}, as_json)


@train_app.command("sft")
def train_sft_cmd(
    data: str = typer.Option(..., "--data", help="JSONL rows from 'train data'."),
    out: str = typer.Option(..., "--out", "-o", help="Adapter folder (safetensors, config, train_log.json)."),
    stage: str = typer.Option("all", "--stage", help="Rows to train on: all, curriculum or task."),
    max_steps: int = typer.Option(None, "--max-steps", min=1, help="Stop after this many optimiser steps."),
    epochs: int = typer.Option(1, "--epochs", min=1),
    layers: int = typer.Option(8, "--layers", min=1, help="LoRA on the top this many blocks."),
    max_len: int = typer.Option(4096, "--max-len", min=16, help="Longer rows are skipped (counted)."),
    lr: float = typer.Option(2e-4, "--lr"),
    prompt_grad: str = typer.Option("frozen", "--prompt-grad", help="frozen: the prompt runs once per shared "
                                    "prefix, without gradient (fast); full: the exact gradient through it too."),
    grad_accum: int = typer.Option(4, "--grad-accum", min=1),
    threads: int = typer.Option(None, "--threads", min=1, help="torch threads (default: torch's)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in --out."),
    init_adapter: str = typer.Option(None, "--init-adapter", help="Adapter folder to start from (its weights, a "
                                     "new optimiser): e.g. the SFT adapter, on a self-training round's set."),
    seed: int = typer.Option(42, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """LoRA SFT of the embedded model on the rows (learning/sft.py)."""
    from learning.sft import SFTConfig, train_sft

    if stage not in ("all", "curriculum", "task"):
        raise typer.BadParameter("--stage must be all, curriculum or task")
    if prompt_grad not in ("frozen", "full"):
        raise typer.BadParameter("--prompt-grad must be frozen or full")
    from learning.dataset import read_jsonl

    rows = read_jsonl(data)
    if stage != "all":
        rows = [r for r in rows if r.get("meta", {}).get("stage") == stage]
    cfg = SFTConfig(out_dir=out, max_steps=max_steps, epochs=epochs, layers=layers, max_len=max_len, lr=lr,
                    grad_accum=grad_accum, threads=threads, seed=seed, init_adapter=init_adapter,
                    prompt_grad=prompt_grad)
    res = train_sft(rows, cfg, resume=resume, progress=not as_json)
    _emit({**res.as_dict(), "rows_given": len(rows), "stage": stage}, as_json)


@train_app.command("export")
def train_export(
    adapter: str = typer.Option(..., "--adapter", help="Adapter folder from 'train sft'."),
    out: str = typer.Option(..., "--out", "-o", help="GGUF LoRA file to write (use it with INTENTREC_LLM_ADAPTER)."),
    check: bool = typer.Option(True, "--drift/--no-drift", help="Compare next-token log-probs of transformers + "
                               "adapter with llama.cpp + the exported file on a few prompts."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Export a LoRA adapter to llama.cpp's GGUF LoRA format (learning/export.py) and check the drift."""
    from learning.export import DRIFT_PROMPTS, drift, export_gguf_lora

    t0 = time.perf_counter()
    res = export_gguf_lora(adapter, out)
    if check:
        res["drift"] = drift(adapter, out, DRIFT_PROMPTS)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    _emit(res, as_json)
    if check and not res["drift"]["passed"]:
        typer.echo(f"drift check failed: llama.cpp + {out} is {res['drift']['excess']:.3f} further from "
                   f"transformers + {adapter} than the base models are (tolerance {res['drift']['tolerance']}), "
                   f"or the top token differs", err=True)
        raise typer.Exit(1)


@train_app.command("self-train")
def train_self_train(
    data: str = typer.Option(..., "--data", help="JSONL rows from 'train data' (task rows are sampled)."),
    out: str = typer.Option(..., "--out", "-o", help="JSONL of the next SFT set (kept rows; others pass through)."),
    samples: int = typer.Option(4, "--samples", min=1, max=16, help="Answers sampled per prompt (decoded together)."),
    temperature: float = typer.Option(0.8, "--temperature", min=0.0),
    adapter: str = typer.Option(None, "--adapter", help="GGUF LoRA adapter to sample with (default: the base model)."),
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N task rows."),
    seed: int = typer.Option(42, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """One self-training round (learning/self_train.py): sample, score with the constrained reward, keep the best."""
    from evals.tag_eval import default_encoder
    from learning.dataset import read_jsonl, write_jsonl
    from learning.self_train import SelfTrainConfig, self_train_round
    from llm.local import LocalChatModel

    rows = read_jsonl(data)
    if limit:
        tasks = [r for r in rows if r.get("meta", {}).get("stage") == "task"][:limit]
        rows = [r for r in rows if r.get("meta", {}).get("stage") != "task"] + tasks
    model = LocalChatModel(schema_hint=False, parallel_sequences=max(samples, 2), **({"adapter": adapter} if adapter else {}))
    encoder = default_encoder()
    say = None if as_json else (lambda i, n: typer.echo(f"  {i}/{n} prompts", err=True))
    kept, stats = self_train_round(rows, model, encoder.encode, SelfTrainConfig(samples=samples, temperature=temperature,
                                                                                seed=seed), progress=say)
    write_jsonl(kept, out)
    _emit({"out": out, "model": model.model_name, **stats.as_dict()}, as_json)


@train_app.command("grpo")
def train_grpo_cmd(
    data: str = typer.Option(..., "--data", help="JSONL rows from 'train data' (task rows give the prompts)."),
    out: str = typer.Option(..., "--out", "-o", help="Folder for TRL's checkpoints and the final adapter."),
    reward: str = typer.Option("crs", "--reward", help="crs (accuracy gated by the others) or summed (ablation)."),
    adapter: str = typer.Option(None, "--adapter", help="SFT adapter folder to continue (default: a new LoRA)."),
    max_steps: int = typer.Option(10, "--max-steps", min=1),
    generations: int = typer.Option(4, "--generations", min=2, help="Answers sampled per prompt (the group)."),
    prompts_per_step: int = typer.Option(1, "--prompts-per-step", min=1),
    max_new: int = typer.Option(160, "--max-completion", min=8, help="Generated tokens per answer at most."),
    temperature: float = typer.Option(0.8, "--temperature", min=0.0),
    lr: float = typer.Option(1e-5, "--lr"),
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N task rows."),
    threads: int = typer.Option(None, "--threads", min=1, help="torch threads (default: torch's)."),
    seed: int = typer.Option(42, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Constrained GRPO with TRL (learning/grpo.py); resumes from the last checkpoint in --out."""
    from evals.tag_eval import default_encoder
    from learning.grpo import REWARDS, GRPOSettings, train_grpo

    if reward not in REWARDS:
        raise typer.BadParameter(f"--reward must be one of {', '.join(REWARDS)}")
    from learning.dataset import read_jsonl

    rows = read_jsonl(data)
    rows = [r for r in rows if r.get("meta", {}).get("stage") == "task"][:limit]
    settings = GRPOSettings(out_dir=out, reward=reward, init_adapter=adapter, max_steps=max_steps,
                            num_generations=generations, prompts_per_step=prompts_per_step,
                            max_completion_length=max_new, temperature=temperature, lr=lr, seed=seed, threads=threads)
    # the Trainer prints its per-step logs on stdout; with --json they go to stderr, so stdout is the JSON
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        res = train_grpo(rows, default_encoder().encode, settings, progress=not as_json)
    _emit({**res.as_dict(), "rows_given": len(rows)}, as_json)
