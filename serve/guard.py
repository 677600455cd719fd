"""A pure ASGI middleware in front of the whole app: bearer-token auth, then the body size limit.

* **Auth.** With a token configured, every HTTP request except those to ``open_paths``
  (``/healthz``) needs ``Authorization: Bearer <token>``; the token is compared with
  ``hmac.compare_digest``. Anything else gets 401 with ``WWW-Authenticate: Bearer`` before the app
  (or the body) is touched. This covers FastAPI's own pages (``/docs``, ``/openapi.json``) and
  unknown paths too, which route-level dependencies would not.
* **Body limit.** A ``Content-Length`` above ``max_body_bytes`` is refused with 413 at once. The
  body is then read here, counting bytes as they arrive, so a chunked body without a
  ``Content-Length`` (or one that lies) is cut as soon as it passes the limit; the app gets the
  buffered body (at most ``max_body_bytes``) replayed. Reading it up front is cheap at this size and
  means no route can consume an unchecked body.
* **Refusing cleanly.** Before an early 401/413 the rest of the request body is read and thrown
  away (at most ``DRAIN_BYTES`` and ``DRAIN_S`` seconds), then the reply closes the connection.
  Closing a socket with unread data makes the kernel send a TCP reset, and a client still sending
  its body would then see "connection reset" instead of the 413. A body larger than that (or a
  client waiting on ``Expect: 100-continue``, which never sends it) gets the reply at once.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DRAIN_BYTES = 1024 * 1024
DRAIN_S = 5.0


class Guard:
    def __init__(self, app: ASGIApp, *, token: str | None, max_body_bytes: int,
                 open_paths: Iterable[str] = ("/healthz",)):
        self.app = app
        self.token = token.encode("utf-8") if token is not None else None
        self.max_body_bytes = int(max_body_bytes)
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        if self.token is not None and scope.get("path") not in self.open_paths:
            problem = self._auth_problem(headers.get("authorization"))
            if problem is not None:
                await _drain(receive, headers)
                await _reply(send, 401, problem, [(b"www-authenticate", b'Bearer realm="intentrec"')])
                return
        declared = headers.get("content-length")
        if declared is not None:
            try:
                n = int(declared)
                if n < 0:
                    raise ValueError
            except ValueError:
                await _reply(send, 400, f"invalid Content-Length header: {declared[:40]!r}")
                return
            if n > self.max_body_bytes:
                if n <= DRAIN_BYTES:
                    await _drain(receive, headers)
                await _reply(send, 413, f"request body too large: {n} bytes; the limit is {self.max_body_bytes} "
                                        "bytes")
                return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away before sending its body: nothing to answer
            if message["type"] != "http.request":
                continue
            chunk = message.get("body", b"") or b""
            total += len(chunk)
            if total > self.max_body_bytes:
                if message.get("more_body", False):
                    await _drain(receive, headers, already=total)
                await _reply(send, 413, f"request body too large: more than {self.max_body_bytes} bytes "
                                        f"received; the limit is {self.max_body_bytes} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _auth_problem(self, value: str | None) -> str | None:
        if not value:
            return "missing API token: send the header 'Authorization: Bearer <token>'"
        scheme, _, given = value.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return "malformed Authorization header: expected 'Bearer <token>'"
        assert self.token is not None
        if not hmac.compare_digest(given.strip().encode("utf-8"), self.token):
            return "invalid API token"
        return None


async def _drain(receive: Receive, headers: dict[str, str], already: int = 0) -> None:
    """Read and discard the rest of the request body, within ``DRAIN_BYTES`` and ``DRAIN_S``."""
    if headers.get("expect", "").lower() == "100-continue" and not already:
        return  # the client sends nothing until told to continue: nothing to drain
    seen = already
    with anyio.move_on_after(DRAIN_S):
        while seen <= DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b"") or b"")
            if not message.get("more_body", False):
                return


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in scope.get("headers") or []:
        out.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
    return out


async def _reply(send: Send, status: int, detail: str, extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode("utf-8")
    headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json"),
                                          (b"content-length", str(len(body)).encode()),
                                          (b"x-content-type-options", b"nosniff"),
                                          (b"connection", b"close")]  # a body may be left unread
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": body})


__all__ = ["Guard"]
