"""LLM settings: which backend, which model, how to call it.

Precedence (highest first), as in RecBole: **CLI / explicit keyword arguments > environment
(``INTENTREC_LLM_*``) > config file > defaults**.

* Environment: every field as ``INTENTREC_LLM_<FIELD>``, e.g. ``INTENTREC_LLM_BACKEND=openai``,
  ``INTENTREC_LLM_BASE_URL=http://127.0.0.1:8000/v1``, ``INTENTREC_LLM_ROLES='{"explainer":
  {"temperature": 0.8}}'`` (complex values as JSON).
* Config file: TOML or JSON, given as ``LLMSettings.load(config_file=...)`` / ``--config`` or
  ``INTENTREC_LLM_CONFIG``. Keys live under an ``[llm]`` table when there is one, else at the top
  level. Unknown keys are an error (a typo should not silently fall back to a default).

Design decisions:

* ``model`` is the served model name for ``openai`` (``None``: ask the server's ``/models`` and
  take the first, which is what ``vllm serve <model>`` and llama.cpp's server list). For ``local``
  a ``model`` ending in ``.gguf`` is accepted as the GGUF path, so one ``--model`` flag serves both.
* ``roles`` holds per-agent overrides (``{"explainer": {"temperature": 0.8}}``); ``for_role``
  applies them. Roles with identical effective settings share one model object.
* ``n_threads`` defaults to the physical cores this process may use, as llama.cpp does (see
  ``llm.local.default_threads``); on a machine shared with other busy jobs, fewer can be faster.
* ``adapter`` (local backend): a GGUF LoRA file from ``app.py train export``. Unset, the embedded
  model runs with the adapter shipped in ``llm/adapters/`` when one ships (its model card is beside
  it), and only when the GGUF is the embedded one; ``none`` is the base model. Traces name the
  adapter by the model id's ``+<sha256[:12]>``.
* ``api_key`` is a ``SecretStr``; without one, ``OPENAI_API_KEY`` is used, then a placeholder
  (local servers ignore it, the openai client insists on one).
"""

from __future__ import annotations

import contextvars
import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from llm.errors import LLMConfigError

#: completion limit: above the worst case of the largest schema a model fills (the expert's: 15 tags
#: of up to ``agents.expert.TAG_MAX_CHARS`` plus its intents, about 700 tokens), so a bounded answer
#: is never cut off
DEFAULT_MAX_TOKENS = 1024

Backend = Literal["local", "openai", "scripted"]

#: the LoRA adapter shipped for the embedded SmolLM2-135M-Instruct (``llm/adapters/MODEL_CARD.md``)
SHIPPED_ADAPTER = Path(__file__).parent / "adapters" / "smollm2-135m-intentrec-tags.gguf"
StructuredMethod = Literal["auto", "json_schema", "function_calling", "json_mode"]
Profile = Literal["auto", "small", "full"]
#: served model names taken for the embedded model (SmolLM2-135M) by ``profile = "auto"``
SMALL_MODEL_MARKERS = ("smollm2-135m", "smollm2_135m")

CONFIG_ENV = "INTENTREC_LLM_CONFIG"
_config_file: contextvars.ContextVar[str | None] = contextvars.ContextVar("intentrec_llm_config", default=None)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The ``llm`` section of a TOML or JSON config file (or its top level when there is none)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise LLMConfigError(f"LLM config file not found: {p}")
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(p.read_text(encoding="utf-8"))
        else:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise LLMConfigError(f"cannot parse LLM config file {p}: {e}") from e
    if not isinstance(data, dict):
        raise LLMConfigError(f"LLM config file {p} must hold a table/object")
    section = data.get("llm", data)
    if not isinstance(section, dict):
        raise LLMConfigError(f"[llm] in {p} must be a table/object")
    return section


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Values from the config file named by ``load(config_file=...)`` or ``INTENTREC_LLM_CONFIG``."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _config_file.get() or os.environ.get(CONFIG_ENV)
        return read_config_file(path) if path else {}


class LLMSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INTENTREC_LLM_", extra="forbid", protected_namespaces=())

    backend: Backend = "local"
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str | None = None
    api_key: SecretStr | None = None
    model_path: str | None = None
    #: local backend: a GGUF LoRA adapter file (``app.py train export``); "none": the base model;
    #: unset: the shipped adapter on the embedded model (``adapter_path``)
    adapter: str | None = None
    n_threads: int | None = Field(default=None, ge=1)
    n_ctx: int = Field(default=8192, ge=128)
    #: local backend: concurrent calls decoded together as up to this many sequences (``llm.parallel``)
    parallel_sequences: int = Field(default=4, ge=1, le=16)
    seed: int = 42
    temperature: float = Field(default=0.2, ge=0.0, le=2.0)
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=1)
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    concurrency: int | None = Field(default=None, ge=1)
    structured_method: StructuredMethod = "auto"
    vllm: bool = False
    schema_hint: bool = True
    profile: Profile = "auto"
    roles: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _ConfigFileSource(settings_cls)

    # ----- construction -----------------------------------------------------------------------------
    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as e:
            path = _config_file.get() or os.environ.get(CONFIG_ENV)
            where = f" (config file {path})" if path else ""
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}" for err in e.errors())
            raise LLMConfigError(f"invalid LLM settings{where}: {problems}") from e

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> LLMSettings:
        """Settings from CLI-style overrides (``None`` values ignored), env, config file, defaults."""
        given = {k: v for k, v in overrides.items() if v is not None}
        token = _config_file.set(str(config_file) if config_file else None)
        try:
            return cls(**given)
        finally:
            _config_file.reset(token)

    def for_role(self, role: str) -> LLMSettings:
        """These settings with the overrides of ``roles[role]`` applied."""
        over = self.roles.get(role) or {}
        if not over:
            return self
        data = {**self.model_dump(exclude={"roles"}), **over, "roles": self.roles}
        try:
            return type(self)(**data)
        except LLMConfigError as e:
            raise LLMConfigError(f"role {role!r}: {e}") from e

    # ----- derived ---------------------------------------------------------------------------------
    def gguf_path(self) -> str | None:
        """The GGUF for the local backend: ``model_path``, or ``model`` when it names a GGUF file."""
        if self.model_path:
            return self.model_path
        if self.model and (self.model.lower().endswith(".gguf") or Path(self.model).is_file()):
            return self.model
        return None

    def adapter_path(self) -> str | None:
        """The LoRA file the local backend applies: ``adapter`` ("none": no adapter); unset, the
        shipped one when the GGUF is the embedded default and the file ships, else none."""
        if self.adapter:
            return None if self.adapter.strip().lower() == "none" else self.adapter
        if self.gguf_path() is None and SHIPPED_ADAPTER.is_file():
            return str(SHIPPED_ADAPTER)
        return None

    def api_key_value(self) -> str:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        return os.environ.get("OPENAI_API_KEY") or "not-needed"

    def threads(self) -> int:
        from llm.local import default_threads

        return self.n_threads or default_threads()

    def small_model(self, model_id: str | None = None) -> bool:
        """Whether runs get the small-model context defaults (``intentrec.small_model_profile``):
        ``profile`` says so, or with ``auto`` the local backend, or a server whose model name is the
        embedded model's (SmolLM2-135M served by vLLM gets the same defaults as in process)."""
        if self.profile != "auto":
            return self.profile == "small"
        if self.backend == "local":
            return True
        name = (model_id or self.model or "").lower()
        return any(m in name for m in SMALL_MODEL_MARKERS)

    def public_dict(self) -> dict[str, Any]:
        """Settings for logs and ``llm check`` (the API key masked)."""
        d = self.model_dump(mode="json")
        d["api_key"] = "***" if self.api_key else None
        return d
