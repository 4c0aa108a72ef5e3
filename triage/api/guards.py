"""HTTP guards that hold for every route, before any endpoint runs (ASGI middleware).

- :class:`BodyLimit`: no request body over :data:`MAX_REQUEST_BYTES` is read. A declared
  Content-Length over it is answered 413 at once, before a byte of the body is taken; a body
  sent without one (chunked) is cut off where it passes the limit and answered 413 too
  (unless the endpoint had answered already). Endpoints keep their own, smaller limits;
  this one protects the process (which also runs the DICOM and HL7 listeners) from a
  stranger's multi-gigabyte POST, signed in or not.
- :class:`SecurityHeaders`: every answer says it may not be framed by another page
  (``X-Frame-Options: DENY``, CSP ``frame-ancestors 'none'``), is not to be sniffed as
  another type, sends no referrer, and - for pages and API answers that carry patient data -
  is not to be cached (``Cache-Control: no-store`` unless the endpoint set its own).
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# the largest body any endpoint takes is the rules editor's (256 KiB of text and a form)
MAX_REQUEST_BYTES = 512 * 1024

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)


class _TooLarge(Exception):
    """A body without Content-Length read past the limit (BodyLimit answers 413)."""


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int = MAX_REQUEST_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.limit
            except ValueError:
                too_big = False  # the server has answered 400 to a bad header already
            if too_big:
                message = f"the request body is larger than {self.limit} bytes"
                await JSONResponse({"error": message}, 413)(scope, receive, send)
                return
        taken = 0
        started = False

        async def capped() -> Message:
            nonlocal taken
            message = await receive()
            if message["type"] == "http.request":
                taken += len(message.get("body", b""))
                if taken > self.limit:
                    raise _TooLarge  # read no further (a body without Content-Length)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, capped, tracked)
        except _TooLarge:
            if started:  # the app answered before reading all of it: nothing more to say
                return
            message = f"the request body is larger than {self.limit} bytes"
            await JSONResponse({"error": message}, 413)(scope, receive, send)


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                names = {name.lower() for name, _ in headers}
                headers.extend(h for h in SECURITY_HEADERS if h[0] not in names)
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
