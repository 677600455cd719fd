"""The HTTP service (FastAPI): ``POST /recommend``, ``GET /runs/{id}``, ``GET /runs/{id}/view``,
``GET /healthz``. See ``serve.app`` and docs/serve.md."""

from serve.app import create_app
from serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
