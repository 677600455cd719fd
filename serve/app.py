"""The HTTP service: ``create_app(rec_provider, settings=...)`` returns a FastAPI app.

Endpoints (bodies in ``serve.schemas``; docs/serve.md has the whole contract):

* ``POST /recommend`` — ``fresh=true`` runs the graph for the user in a worker thread (the event
  loop stays free); ``fresh=false`` returns the latest logged successful run of that user (what
  ``app.py batch`` writes), or 404.
* ``GET /runs/{run_id}`` — the run's trace as JSON (``runlog.trace.build_trace``).
* ``GET /runs/{run_id}/view`` — the run as a self-contained HTML page (``report.html``).
* ``GET /healthz`` — liveness and whether the recommender is loaded; never waits for a run.

Design decisions
----------------

* **Dependencies are passed in.** ``rec_provider`` is a zero-argument callable returning an
  ``IntentRec``; it is called once, on the first request that needs it (or in the background at
  start-up with ``settings.preload``), from a worker thread, so ``/healthz`` answers while the
  model loads. A failed load is reported (503, and in ``/healthz``) and retried by the next request.
  ``store`` (optional) is the run log to read runs from; without it the recommender's own run log
  is used, which means ``/runs`` and ``fresh=false`` wait for the recommender to load.
* **Bounded concurrency, no queue.** At most ``settings.max_concurrent_runs`` graph runs are in
  flight; one more gets 429 with ``Retry-After``. The counter is only touched on the event loop, and
  a run's slot is released when its thread ends (a client hanging up does not free the slot while
  the graph still runs).
* **Errors are one clear JSON line** ``{"detail": ...}``, never a traceback: unknown user 404,
  empty history 422, malformed JSON 400, a field that is not allowed or a bad value 422 (naming the
  field), body too large 413, unknown run 404, an ambiguous run id prefix 400, other user errors
  (``IntentRecError``) 400. Failures that are the server's, not the client's, are 5xx: the
  recommender failed to load 503, the language model failed (``LLMError``) 502, a node failed
  (``NodeError``) or anything unexpected 500 — naming the logged run id when there is one.
* **Auth and body limit** are a pure ASGI middleware (``serve.guard``) in front of everything.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import anyio
import structlog
from fastapi import FastAPI, Path, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool

from core.errors import EmptyHistoryError, IntentRecError, UnknownUserError
from runlog.store import FINAL_OK, RunNotFoundError, new_id
from serve.guard import Guard
from serve.schemas import (
    ContextOverrides,
    ErrorResponse,
    HealthResponse,
    RecommendRequest,
    RecommendResponse,
    TraceResponse,
)
from serve.settings import ServeSettings

log = structlog.get_logger("intentrec.serve")

#: security headers of the HTML view (the page itself also carries the CSP as a <meta>)
VIEW_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                                           "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


class ApiError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


class LazyRecommender:
    """Builds the ``IntentRec`` once, on first use; thread-safe (one builder, others wait)."""

    def __init__(self, provider: Callable[[], Any]):
        self._provider = provider
        self._lock = threading.Lock()
        self._rec: Any = None
        self.loading = False
        self.error: str | None = None

    @property
    def loaded(self) -> bool:
        return self._rec is not None

    @property
    def instance(self) -> Any:
        """The recommender if loaded, else ``None`` (never loads)."""
        return self._rec

    def get(self) -> Any:
        if self._rec is not None:
            return self._rec
        with self._lock:
            if self._rec is None:
                self.loading = True
                try:
                    self._rec = self._provider()
                    self.error = None
                except Exception as e:
                    self.error = f"{type(e).__name__}: {e}"
                    log.error("recommender failed to load", error=self.error)
                    raise ApiError(503, f"the recommender could not be loaded: {self.error}") from e
                finally:
                    self.loading = False
        return self._rec


class _State:
    def __init__(self) -> None:
        self.in_flight = 0


_ERRORS = {400: {"model": ErrorResponse, "description": "malformed JSON, or another input error"},
           401: {"model": ErrorResponse, "description": "missing or wrong bearer token (when auth is on)"},
           413: {"model": ErrorResponse, "description": "request body over max_body_bytes"},
           422: {"model": ErrorResponse, "description": "a field that is not allowed, or a bad value"}}


def create_app(rec_provider: Callable[[], Any], *, settings: ServeSettings, store: Any = None) -> FastAPI:
    """The service. ``rec_provider()`` builds the ``IntentRec`` (called once, lazily); ``store``: the
    ``RunLog`` to read runs from (default: the recommender's ``runlog``)."""
    recommender = LazyRecommender(rec_provider)
    state = _State()
    token = settings.token()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        if settings.preload:
            threading.Thread(target=_preload, args=(recommender,), name="intentrec-preload", daemon=True).start()
        yield

    app = FastAPI(title="IntentRec", version="0.1.0", lifespan=lifespan,
                  description="Intent-centric multi-agent recommendations over HTTP. See docs/serve.md.")
    app.state.recommender = recommender
    app.state.settings = settings
    app.add_middleware(Guard, token=token, max_body_bytes=settings.max_body_bytes)
    # documents the bearer scheme in the OpenAPI schema; the Guard is what enforces it
    bearer = [Security(HTTPBearer(auto_error=False))] if token else []

    def run_store() -> Any:
        if store is not None:
            return store
        rec = recommender.get()
        if rec.runlog is None:
            raise ApiError(503, "this server has no run log (INTENTREC_RUNLOG=0): /runs and fresh=false need one")
        return rec.runlog

    # ----- error handlers ---------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(IntentRecError)
    async def _intentrec_error(_: Request, exc: IntentRecError) -> JSONResponse:
        # an unknown run's own message names the run log file: not for clients
        detail = f"unknown run id {exc.run_id!r}" if isinstance(exc, RunNotFoundError) else str(exc)
        return JSONResponse({"detail": detail}, status_code=status_for(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        status, body = validation_body(exc.errors())
        return JSONResponse(body, status_code=status)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error", error=f"{type(exc).__name__}: {exc}")
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)

    # ----- endpoints ------------------------------------------------------------------------
    @app.get("/healthz", response_model=HealthResponse, tags=["service"])
    async def healthz() -> HealthResponse:
        rec = recommender.instance
        has_log = store is not None or (None if rec is None else rec.runlog is not None)
        return HealthResponse(model_loaded=recommender.loaded, loading=recommender.loading,
                              load_error=recommender.error, runs_in_flight=state.in_flight,
                              max_concurrent_runs=settings.max_concurrent_runs, runlog=has_log, auth=token is not None)

    @app.post("/recommend", response_model=RecommendResponse, tags=["recommend"], dependencies=bearer,
              responses={**_ERRORS, 404: {"model": ErrorResponse, "description": "unknown user, or nothing logged"},
                         429: {"model": ErrorResponse, "description": "max_concurrent_runs runs in flight"},
                         502: {"model": ErrorResponse, "description": "the language model failed"},
                         503: {"model": ErrorResponse, "description": "the recommender could not be loaded"}})
    async def recommend(body: RecommendRequest) -> RecommendResponse:
        """Recommendations for one user: a fresh graph run, or the latest logged one."""
        if not body.fresh:
            if body.context is not None:
                raise ApiError(422, "context applies only to fresh=true (fresh=false returns a logged run as it is)")
            return await run_in_threadpool(lambda: _from_log(run_store(), body.user_id))
        if state.in_flight >= settings.max_concurrent_runs:
            raise ApiError(429, f"{state.in_flight} run(s) already in flight (max_concurrent_runs="
                                f"{settings.max_concurrent_runs}); retry later, or POST with fresh=false",
                           headers={"Retry-After": str(settings.retry_after_s)})
        state.in_flight += 1
        try:
            # not cancellable: if the client hangs up, the slot stays taken until the graph ends
            return await anyio.to_thread.run_sync(_fresh, recommender, body)
        finally:
            state.in_flight -= 1

    @app.get("/runs/{run_id}", response_model=TraceResponse, tags=["runs"], dependencies=bearer,
             responses={**_ERRORS, 404: {"model": ErrorResponse, "description": "unknown run id"}})
    def get_run(run_id: str = Path(..., min_length=1, max_length=64, description="A run id or a unique prefix "
                                                                              "(at least 4 characters).")) -> Any:
        """The run's trace: tasks (nodes and subgraph nodes), model calls, verdicts, recommendations."""
        from runlog.trace import build_trace

        return build_trace(run_store(), run_id)

    @app.get("/runs/{run_id}/view", response_class=HTMLResponse, tags=["runs"], dependencies=bearer,
             responses={**_ERRORS, 404: {"model": ErrorResponse, "description": "unknown run id"},
                        200: {"content": {"text/html": {}}, "description": "a self-contained HTML page"}})
    def view_run(run_id: str = Path(..., min_length=1, max_length=64)) -> HTMLResponse:
        """The run as a self-contained HTML page (no scripts, no external assets)."""
        from report.html import render_run_page

        return HTMLResponse(render_run_page(run_store(), run_id), headers=VIEW_HEADERS)

    return app


def _preload(recommender: LazyRecommender) -> None:
    with contextlib.suppress(ApiError):  # recorded in recommender.error, shown by /healthz
        recommender.get()


def _fresh(recommender: LazyRecommender, body: RecommendRequest) -> RecommendResponse:
    rec = recommender.get()
    overrides = body.context.model_dump(exclude_none=True) if body.context else {}
    now = overrides.pop("now", None)
    run_id = new_id()
    logged = getattr(rec, "runlog", None) is not None
    try:
        out = rec.recommend(body.user_id, now=now, run_id=run_id, **overrides)
    except (UnknownUserError, EmptyHistoryError):
        raise
    except IntentRecError as e:
        status = status_for(e)
        if status >= 500 and logged:
            raise ApiError(status, f"{e} (logged as run {run_id}: GET /runs/{run_id})") from e
        raise
    except Exception as e:
        log.error("run failed", run_id=run_id, error=f"{type(e).__name__}: {e}")
        where = f"; logged as run {run_id}: GET /runs/{run_id}" if logged else ""
        raise ApiError(500, f"the run failed ({type(e).__name__}){where}") from e
    return RecommendResponse(
        run_id=out.get("run_id") or (run_id if logged else None), user_id=str(body.user_id), status=out.get("status"),
        fallback=out.get("fallback"), source="fresh", personas=out.get("personas") or [],
        tags=out.get("tags") or [], recommendations=out.get("recommendations") or [])


def _from_log(store: Any, user_id: str) -> RecommendResponse:
    """The newest run of kind ``recommend`` for the user whose status is a success (``FINAL_OK``);
    forks (edited state) and replays are not served."""
    for run in store.runs(user=str(user_id), kind="recommend"):
        if run["status"] in FINAL_OK:
            out = run.get("output") or {}
            return RecommendResponse(
                run_id=run["run_id"], user_id=str(user_id), status=run["status"], fallback=out.get("fallback"),
                source="log", personas=out.get("personas") or [], tags=out.get("tags") or [],
                recommendations=store.recommendations(run["run_id"]))
    raise ApiError(404, f"no logged result for user {user_id}; POST with fresh=true")


def status_for(exc: IntentRecError) -> int:
    from graphs.recommend import NodeError
    from llm.errors import LLMError

    if isinstance(exc, UnknownUserError | RunNotFoundError):
        return 404
    if isinstance(exc, EmptyHistoryError):
        return 422
    if isinstance(exc, LLMError):
        return 502
    if isinstance(exc, NodeError):
        return 502 if isinstance(exc.cause, LLMError) else 500
    return 400  # RunLogError (e.g. an ambiguous run id prefix) and every other user error


_LOC_ROOTS = ("body", "path", "query", "header")


def validation_body(errors: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """FastAPI's validation errors as (status, body): malformed JSON → 400; else 422 naming each field."""
    for e in errors:
        if e.get("type") == "json_invalid":
            loc = e.get("loc") or ()
            pos = loc[-1] if loc and isinstance(loc[-1], int) else None
            why = (e.get("ctx") or {}).get("error") or e.get("msg") or "invalid JSON"
            return 400, {"detail": f"malformed JSON: {why}" + (f" at position {pos}" if pos is not None else "")}
    items = []
    for e in errors:
        loc = [str(x) for x in e.get("loc") or ()]
        parent, path = (loc[0], loc[1:]) if loc and loc[0] in _LOC_ROOTS else ("", loc)
        field = ".".join(path) or parent or "request"
        kind = str(e.get("type") or "")
        msg = str(e.get("msg") or "invalid").removeprefix("Value error, ")
        if kind == "extra_forbidden":
            allowed = _allowed(path[:-1]) if parent == "body" else None
            msg = "not an allowed field" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
        elif parent == "body" and not path and kind in ("model_attributes_type", "dict_type", "model_type"):
            msg = "the body must be a JSON object, sent with Content-Type: application/json"
        elif parent == "body" and not path and kind == "missing":
            msg = "missing JSON body"
        items.append({"field": field, "msg": msg, "type": kind})
    detail = "invalid request: " + "; ".join(f"{i['field']}: {i['msg']}" for i in items)
    return 422, {"detail": detail, "errors": items}


def _allowed(path: list[str]) -> list[str] | None:
    model = {(): RecommendRequest, ("context",): ContextOverrides}.get(tuple(path))
    return list(model.model_fields) if model else None
