"""The review app's front door: an ASGI wrapper that every request passes before FastAPI sees it.

In order: the ``Host`` must be one the server answers to (else 400: DNS rebinding); the token must come
as ``Authorization: Bearer`` or as the cookie that ``/?token=`` sets (HttpOnly, SameSite=Strict, then a
redirect to ``/`` so the token leaves the address bar), compared in constant time (else 403); a write
(POST, PUT, PATCH, DELETE) must send JSON (else 415) of at most ``max_body`` bytes (else 413). Every
answer gets the security headers (a strict Content-Security-Policy, no framing, no sniffing, no referrer)
and ``cache-control: no-store`` unless the route set one. Websockets are refused.

Plain ASGI rather than Starlette middleware: the body limit must stop reading at the limit (a middleware
that sees a ``Request`` has the body stream already), and the answers here never reach the app.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from urllib.parse import parse_qs

from starlette.requests import cookie_parser

#: The names a request's ``Host`` may give (with any port) besides the ``--host`` served on.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
        b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class Guard:
    """ASGI wrapper: Host check (400), token check (403), body limit (413), JSON bodies for writes (415),
    security headers."""

    def __init__(
        self,
        app: Callable,
        *,
        token: str,
        cookie: str,
        max_body: int,
        hosts: tuple[str, ...] | None = LOOPBACK_HOSTS,
        on_close: Callable[[], object] | None = None,
    ) -> None:
        if len(token) < 16:
            raise ValueError("token: expected at least 16 characters")
        self.app, self.cookie, self.max_body = app, cookie, max_body
        self.hosts = None if hosts is None else {h.lower() for h in hosts}
        self._token = token.encode("utf-8")
        self._on_close = on_close

    def _matches(self, value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value.encode("utf-8", errors="replace"), self._token)

    def authorized(self, headers: dict[bytes, bytes]) -> bool:
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth[:7].lower() == "bearer " and self._matches(auth[7:].strip()):
            return True
        # leniently, as browsers do: another local app's cookie (a space, a quote, JSON) must not hide ours,
        # and one of the same name (cookies do not tell ports apart) must not shadow it
        for chunk in headers.get(b"cookie", b"").decode("latin-1").split(";"):
            value = cookie_parser(chunk).get(self.cookie)
            if value is not None and self._matches(value):
                return True
        return False

    def host_allowed(self, headers: dict[bytes, bytes]) -> bool:
        """The request's ``Host`` (port dropped) is one this server answers to."""
        if self.hosts is None:
            return True
        host = headers.get(b"host", b"").decode("latin-1").strip().lower()
        name = host[: host.find("]") + 1] if host.startswith("[") else host.rsplit(":", 1)[0]
        return name in self.hosts

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                return await self.app(scope, receive, send)
            return  # no websockets
        headers = dict(scope.get("headers") or [])
        if not self.host_allowed(headers):
            return await _respond(
                send, 400, b'{"detail":"this server answers only at the address samlabel review printed (Host)"}'
            )
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if scope["path"] == "/" and scope["method"] == "GET" and "token" in query:
            given = query["token"][0]
            if self._matches(given):  # log in, and take the token out of the address bar
                cookie = f"{self.cookie}={given}; HttpOnly; SameSite=Strict; Path=/"
                return await _respond(send, 303, b"", [(b"location", b"/"), (b"set-cookie", cookie.encode())])
            if self.authorized(headers):
                return await _respond(send, 303, b"", [(b"location", b"/")])
        if not self.authorized(headers):
            return await _respond(send, 403, b'{"detail":"forbidden: open the URL samlabel review printed"}')
        method = scope["method"]
        if method in ("POST", "PUT", "PATCH", "DELETE"):
            media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if media != b"application/json":
                return await _respond(send, 415, b'{"detail":"send the body as application/json"}')
            body = await _read_body(receive, self.max_body, headers)
            if body is None:
                return await _respond(send, 413, b'{"detail":"request body too large"}')
            receive = _replay(body)

        async def secured_send(message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [h for h in SECURITY_HEADERS if h[0] not in names]
                if b"cache-control" not in names:
                    extra.append((b"cache-control", b"no-store"))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, secured_send)

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()


async def _read_body(receive, limit: int, headers: dict[bytes, bytes]) -> bytes | None:
    """The whole body, or None when it exceeds ``limit`` (by its Content-Length or as it arrives)."""
    try:
        declared = int(headers.get(b"content-length", b"0"))
    except ValueError:
        declared = 0
    if declared > limit:
        return None
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes):
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _respond(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": head + (headers or []) + SECURITY_HEADERS})
    await send({"type": "http.response.body", "body": body})
