"""``app.py serve``: the HTTP service under uvicorn (register with ``app.command("serve")(serve_cmd)``).

Settings are checked before the server starts (a bad date or an empty token fails at once); the
recommender itself (dataset, retriever, model) is built lazily by ``serve.app`` — in the background
right after start-up unless ``--no-preload`` — so ``/healthz`` answers from the first second.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from llm.cli_options import BACKEND_OPT, BASE_URL_OPT, MODEL_OPT, llm_overrides
from runlog.cli_options import RUNLOG_OPT

console = Console(stderr=True)


def serve_cmd(
    host: str = typer.Option(None, "--host", help="Interface to bind (default 127.0.0.1; INTENTREC_SERVE_HOST)."),
    port: int = typer.Option(None, "--port", "-p", help="Port (default 8000; INTENTREC_SERVE_PORT)."),
    dataset: str = typer.Option(None, "--dataset", "-d", help="Dataset spec (default completejourney)."),
    backend: str = BACKEND_OPT,
    base_url: str = BASE_URL_OPT,
    model: str = MODEL_OPT,
    index_cutoff: str = typer.Option(
        None, "--index-cutoff", help="Use towers and index trained only on behaviours before YYYY-MM-DD."),
    token: str = typer.Option(
        None, "--token", help="Require 'Authorization: Bearer TOKEN' on every endpoint but /healthz. Prefer "
        "INTENTREC_SERVE_API_TOKEN: a command line is visible to other users of the machine."),
    prompts: str = typer.Option(None, "--prompts", help="Prompt override folder."),
    runlog: Path = RUNLOG_OPT,
    factory: str = typer.Option(None, "--factory", help="module:function(RunLog) -> IntentRec instead of the settings."),
    no_preload: bool = typer.Option(False, "--no-preload", help="Build the recommender on the first request, not at "
                                                                 "start-up."),
) -> None:
    """Serve recommendations over HTTP (FastAPI + uvicorn): POST /recommend, GET /runs/{id}, GET /runs/{id}/view, GET /healthz."""
    import uvicorn
    from pydantic import ValidationError

    from core.errors import IntentRecError
    from llm.settings import LLMSettings
    from runlog.cli_options import load_factory
    from runlog.settings import TraceSettings
    from runlog.store import open_runlog
    from serve.app import create_app
    from serve.settings import ServeSettings

    given = {"host": host, "port": port, "api_token": token}
    try:
        settings = ServeSettings(**{k: v for k, v in given.items() if v is not None},
                                 **({"preload": False} if no_preload else {}))
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise IntentRecError(f"invalid serve settings: {problems}") from None
    retrieval_settings = None
    if index_cutoff:
        from core.options import parse_date
        from retrieval.settings import RetrievalSettings

        retrieval_settings = RetrievalSettings(cutoff=parse_date(index_cutoff, "--index-cutoff"))
    llm_settings = LLMSettings(**llm_overrides(backend, base_url, model))
    store = open_runlog(runlog) if runlog is not None or TraceSettings().runlog else None
    build = load_factory(factory)

    def provider() -> Any:
        if build is not None:
            return build(store)
        from intentrec.service import IntentRec

        return IntentRec.from_settings(dataset, llm_settings=llm_settings, retrieval_settings=retrieval_settings,
                                       prompts_dir=prompts, runlog=store if store is not None else False,
                                       progress=False)

    app = create_app(provider, settings=settings, store=store)
    where = f"http://{_url_host(settings.host)}:{settings.port}"
    console.print(f"[bold]IntentRec[/] serving on {where}  (docs: {where}/docs; "
                  f"auth {'on' if settings.token() else 'off'}; run log: {store.path if store is not None else 'off'})")
    if settings.token() is None and not _is_loopback(settings.host):
        console.print(f"[yellow]warning:[/] listening on {settings.host} without a token; set "
                      "INTENTREC_SERVE_API_TOKEN")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", server_header=False,
                proxy_headers=False)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
