"""What the server refuses before a request reaches a route: bodies over the size limit (413),
requests for another host name (a DNS-rebinding page posing as ``localhost``), requests without
the token when one is set (401), and file names that could leave the dataset (400).

Written as plain ASGI middleware (not ``BaseHTTPMiddleware``) so the body limit applies to
the stream as it arrives: a client that sends no ``Content-Length`` (chunked) is cut off at the
limit, not after the whole body was read into memory.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
from collections.abc import Iterable
from urllib.parse import parse_qs

from grounded_sam.errors import InputError

__all__ = [
    "DEFAULT_MAX_BODY",
    "Guard",
    "PathRefused",
    "is_loopback",
    "check_file_name",
]

DEFAULT_MAX_BODY = 20 * 1024 * 1024  # 20 MiB
TOKEN_HEADER = "x-grounded-sam-token"
_DRIVE = re.compile(r"^[A-Za-z]:")


class PathRefused(InputError):
    """A file name that is absolute or could leave the dataset's image folders."""


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only."""
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_file_name(name: str) -> str:
    """A dataset-relative file name with ``/`` separators, or :class:`PathRefused`.

    Refused: empty names, absolute paths (``/x``, ``C:x``, ``\\\\server``), backslashes, NUL
    and other control characters, and ``.`` or ``..`` segments. The name reaches here already
    percent-decoded by the router, so ``%2e%2e%2f`` is refused like ``../``.
    """
    if not isinstance(name, str) or not name:
        raise PathRefused("empty file name")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise PathRefused("file name contains control characters")
    if name.startswith("/") or "\\" in name or _DRIVE.match(name):
        raise PathRefused(f"absolute or non-POSIX path refused: {name!r}")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise PathRefused(f"path traversal refused: {name!r} (only dataset file names are served)")
    return name


async def _send_json(send, status: int, message: str, headers: Iterable = ()) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: body size limit, host check and token check.

    Args:
        app: the wrapped ASGI app.
        max_body: largest request body in bytes; larger ones get 413.
        token: when set, every ``/api/`` request must carry it (``Authorization: Bearer T``,
            an ``X-Grounded-SAM-Token`` header or a ``?token=`` query parameter); the page
            and its static files hold no data and are served without it.
        allowed_hosts: host names (without port) the ``Host`` header may name; ``None``
            allows any (a server bound to a non-loopback address is reached by names we
            cannot know; the token protects it).
    """

    def __init__(
        self,
        app,
        *,
        max_body: int = DEFAULT_MAX_BODY,
        token: str | None = None,
        allowed_hosts: Iterable[str] | None = None,
    ) -> None:
        self.app = app
        self.max_body = int(max_body)
        self.token = token or None
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.allowed_hosts is not None:
            host = _host_name(headers.get("host", ""))
            if host not in self.allowed_hosts:
                await _send_json(
                    send,
                    400,
                    f"unexpected Host header {headers.get('host', '')!r}; open the URL the "
                    "server printed",
                )
                return
        if self.token is not None and scope["path"].startswith("/api/"):
            if not self._authorised(scope, headers):
                await _send_json(
                    send,
                    401,
                    "missing or wrong token: open the URL the server printed (with ?token=) "
                    "or send 'Authorization: Bearer TOKEN'",
                    [(b"www-authenticate", b"Bearer")],
                )
                return
        length = headers.get("content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                await _send_json(send, 400, f"bad Content-Length {length!r}")
                return
            if n > self.max_body:
                await _send_json(send, 413, self._too_large())
                return
        # read the whole body first (at most max_body bytes are ever held), then replay it:
        # the app never sees a body over the limit, and a 413 is sent before any route runs
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_body:
                await _send_json(send, 413, self._too_large(), [(b"connection", b"close")])
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self) -> str:
        mb = self.max_body / 2**20  # --max-body-mb counts MiB
        return (
            f"request body over the server's limit of {self.max_body} bytes ({mb:.3g} MB); "
            "send a smaller image or restart the app with a larger --max-body-mb"
        )

    def _authorised(self, scope, headers: dict[str, str]) -> bool:
        given = []
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given.append(auth[7:].strip())
        if TOKEN_HEADER in headers:
            given.append(headers[TOKEN_HEADER].strip())
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given.extend(query.get("token", []))
        expected = self.token.encode()
        return any(hmac.compare_digest(g.encode(), expected) for g in given)


def _host_name(host: str) -> str:
    """``"127.0.0.1:7860"`` -> ``"127.0.0.1"``; ``"[::1]:7860"`` -> ``"::1"``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
