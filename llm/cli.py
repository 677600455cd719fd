"""`app.py llm ...` commands.

``llm check`` makes one real structured call through the configured backend (settings from
flags > ``INTENTREC_LLM_*`` env > ``--config`` / ``INTENTREC_LLM_CONFIG`` file > defaults) and prints
validity, tokens in/out, tokens/s, load time and the raw output. Exit code 0 when the output was
valid, 1 when the model never produced valid output, 2 on any other error (unreachable server,
wrong model name, unsupported schema, bad settings).
"""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

llm_app = typer.Typer(no_args_is_help=True)


@llm_app.command("check")
def check(
    backend: str = typer.Option(None, "--backend", help="local (default), openai or scripted."),
    base_url: str = typer.Option(None, "--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1."),
    model: str = typer.Option(None, "--model", help="Served model name (openai) or a GGUF path (local)."),
    model_path: str = typer.Option(None, "--model-path", help="GGUF file for the local backend."),
    structured_method: str = typer.Option(None, "--structured-method",
                                          help="auto, json_schema, function_calling or json_mode."),
    vllm: bool = typer.Option(None, "--vllm/--no-vllm", help="Send vLLM's structured_outputs extra_body."),
    max_tokens: int = typer.Option(None, "--max-tokens", help="Completion token limit."),
    timeout_s: float = typer.Option(None, "--timeout", help="Request timeout in seconds (openai)."),
    config: str = typer.Option(None, "--config", help="TOML or JSON config file (keys under an llm table)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """One real structured call (a small shopping-intent schema) through the configured backend."""
    from llm.check import check_exit_code, run_check
    from llm.settings import LLMSettings

    settings = LLMSettings.load(config, backend=backend, base_url=base_url, model=model, model_path=model_path,
                                structured_method=structured_method, vllm=vllm, max_tokens=max_tokens,
                                timeout_s=timeout_s)
    result = run_check(settings)
    if as_json:
        print(json.dumps(result, ensure_ascii=False, indent=2, default=str))
    else:
        _print(result)
    raise typer.Exit(check_exit_code(result))


def _print(r: dict) -> None:
    console = Console()
    t = Table(title=f"llm check: {r.get('backend')} backend", show_header=False)
    for key in ("model", "base_url", "model_path", "structured_method", "valid", "attempts", "prompt_tokens",
                "completion_tokens", "latency_s", "tokens_per_s", "prompt_eval_s", "decode_tokens_per_s", "load_s",
                "network_connects"):
        if key in r:
            t.add_row(key, str(r[key]))
    console.print(t)
    if r.get("raw") is not None:
        console.print("[bold]raw output[/]")
        console.print(r.get("raw"), markup=False, highlight=False)
    if r.get("error"):
        console.print(f"[bold red]error ({r['error']['type']}):[/] {r['error']['message']}", highlight=False)
