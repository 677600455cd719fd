"""Settings of the HTTP service: environment ``INTENTREC_SERVE_<FIELD>``; explicit keyword arguments
(the CLI's options) win over the environment.

* ``api_token``: when set, every endpoint except ``/healthz`` (the OpenAPI schema and docs pages
  included) requires ``Authorization: Bearer <token>``. A ``SecretStr``, so it never shows in a repr
  or a log line. Prefer the environment variable to ``--token`` (a command line is visible to
  every user of the machine). An empty token is an error, not "auth off".
* ``max_body_bytes``: request bodies above it get 413, whether announced by ``Content-Length`` or
  streamed in chunks without one.
* ``max_concurrent_runs``: graph runs (``fresh=true``) in flight at once; one more gets 429 with
  ``Retry-After`` at once rather than queueing (a queued request would hold its connection for
  minutes on the embedded model, and a client can retry or read the logged result).
* ``preload``: start loading the recommender in the background when the server starts (``/healthz``
  answers all along and reports ``model_loaded``); off, it loads on the first request needing it.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INTENTREC_SERVE_", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_token: SecretStr | None = None
    max_body_bytes: int = Field(16 * 1024, ge=1)
    max_concurrent_runs: int = Field(2, ge=1)
    retry_after_s: int = Field(5, ge=1)
    preload: bool = True

    @field_validator("api_token")
    @classmethod
    def _not_blank(cls, v: SecretStr | None) -> SecretStr | None:
        # an empty variable (``INTENTREC_SERVE_API_TOKEN=$UNSET``) must not silently turn auth off
        if v is not None and not v.get_secret_value().strip():
            raise ValueError("api_token is empty: unset INTENTREC_SERVE_API_TOKEN to turn auth off")
        return v

    def token(self) -> str | None:
        """The API token, or ``None`` when auth is off."""
        return None if self.api_token is None else self.api_token.get_secret_value()
