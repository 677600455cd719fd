"""The LLM options every command shares (``--backend``, ``--base-url``, ``--model``): declared once
here, and turned into :class:`LLMSettings` fields by one function."""

from __future__ import annotations

from typing import Any

import typer

BACKEND_OPT = typer.Option(None, "--backend", help="LLM backend: local (default), openai, scripted.")
BASE_URL_OPT = typer.Option(None, "--base-url", help="OpenAI-compatible server URL (openai backend), "
                                                     "e.g. http://127.0.0.1:8000/v1.")
MODEL_OPT = typer.Option(None, "--model", help="Model name (openai) or GGUF path (local).")


def llm_overrides(backend: str | None, base_url: str | None, model: str | None) -> dict[str, Any]:
    """The options the user gave, as LLMSettings fields (unset ones left to the settings' sources)."""
    return {k: v for k, v in {"backend": backend, "base_url": base_url, "model": model}.items() if v}

