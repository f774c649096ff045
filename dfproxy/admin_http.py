"""The admin port's HTTP/1.1 server: one handler per path, and the dashboard's static files.

Not on the hot path: asyncio streams, keep-alive, no request bodies. Shared by one process's
admin (``dfproxy.admin``) and the ``--workers`` supervisor's (``dfproxy.admin_supervisor``).
The dashboard (``/``) is three files in the package (``dfproxy/admin_ui/``), read once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from dfproxy.http.local_reply import http_date
from dfproxy.http.status import status_line

log = logging.getLogger("dfproxy.admin")

Query = dict[str, list[str]]
Reply = tuple[int, str, bytes]
Handler = Callable[[Query], Awaitable[Reply]]
MAX_HEAD = 16 * 1024
CLOSE_WAIT = 1.0  # seconds for open admin connections to end at shutdown
MAX_BODY = 64 * 1024  # request bodies are read and dropped up to this size

# Endpoints that change the server: POST only, as Envoy (admin.rst: "All mutations must be
# sent as HTTP POST"), so a page in the operator's browser cannot trigger them with a link or
# an image. /logging mutates only with a query (a level to set).
MUTATIONS = frozenset(
    {"/drain_listeners", "/healthcheck/fail", "/healthcheck/ok", "/reset_counters", "/logging"}
)

# The dashboard: path -> (file in dfproxy/admin_ui, content type).
UI_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/ui/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "/ui/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
}
_ui_cache: dict[str, bytes] = {}


def ui_file(name: str) -> bytes:
    data = _ui_cache.get(name)
    if data is None:
        data = _ui_cache[name] = resources.files("dfproxy").joinpath("admin_ui", name).read_bytes()
    return data


def arg(q: Query, name: str, default: str = "") -> str:
    """The first value of query parameter ``name``."""
    return q.get(name, [default])[0]


class AdminHttp:
    """Routes requests to ``self.routes``; subclasses fill the table."""

    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        for path, (name, ctype) in UI_FILES.items():
            self.routes[path] = self._static(name, ctype)
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.local_only = True

    @staticmethod
    def host_allowed(host: bytes | None) -> bool:
        """On a loopback admin, the Host must name loopback (an IP literal or localhost): a
        web page that rebinds its own DNS name to 127.0.0.1 must not read the admin port."""
        if host is None:
            return True  # HTTP/1.0 without Host: not a browser
        name = host.decode("latin-1").strip().lower()
        if name.startswith("["):
            name = name[1 : name.find("]")] if "]" in name else name
        elif name.count(":") == 1:
            name = name.split(":", 1)[0]
        if name == "localhost" or name.endswith(".localhost"):
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    @staticmethod
    def _static(name: str, ctype: str) -> Handler:
        async def serve(q: Query) -> Reply:
            return 200, ctype, ui_file(name)

        return serve

    async def start(self, host: str, port: int) -> int:
        try:
            self.local_only = ipaddress.ip_address(host).is_loopback
        except ValueError:
            self.local_only = host == "localhost"
        self._server = await asyncio.start_server(self._handle, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._clients):
                writer.close()  # idle keep-alive admin clients would hold wait_closed()
            await self._server.wait_closed()
            # Let the handlers see their EOF and end: a handler still pending when the loop
            # stops is cancelled, and asyncio logs that as an error.
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=CLOSE_WAIT)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                if len(head) > MAX_HEAD:
                    return
                request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
                parts = request_line.split(" ")
                if len(parts) != 3:
                    await self._respond(writer, 400, "text/plain", b"bad request\n", close=True)
                    return
                method, target, version = parts
                lower = head.lower()
                # Honour Connection: close (and HTTP/1.0): a client reading to EOF waits else.
                close = version == "HTTP/1.0" or b"\r\nconnection: close" in lower
                headers = _headers(lower)
                try:
                    length = int(headers.get(b"content-length", b"0"))
                except ValueError:
                    length = -1
                if not 0 <= length <= MAX_BODY or b"transfer-encoding" in headers:
                    await self._respond(writer, 413, "text/plain", b"body not accepted\n", True)
                    return
                if length:
                    try:
                        await reader.readexactly(length)  # no endpoint takes a body
                    except (asyncio.IncompleteReadError, ConnectionError):
                        return
                url = urlsplit(target)
                handler = self.routes.get(url.path)
                if self.local_only and not self.host_allowed(headers.get(b"host")):
                    status, ctype = 403, "text/plain"
                    body = b"Host not allowed: this admin port answers only loopback names\n"
                elif handler is None:
                    status, ctype, body = 404, "text/plain", b"invalid path\n"
                elif (
                    url.path in MUTATIONS
                    and method != "POST"
                    and (url.query or url.path != "/logging")
                ):
                    status, ctype = 405, "text/plain"
                    body = f"Method {method} not allowed, POST required.\n".encode()
                else:
                    try:
                        status, ctype, body = await handler(parse_qs(url.query))
                    except Exception:
                        log.exception("admin handler %s failed", url.path)
                        status, ctype, body = 500, "text/plain", b"internal error\n"
                await self._respond(
                    writer, status, ctype, body, close=close, head_only=method == "HEAD"
                )
                if close:
                    return
        finally:
            self._clients.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        ctype: str,
        body: bytes,
        close: bool = False,
        head_only: bool = False,
    ) -> None:
        head = (
            status_line(status)
            + f"content-type: {ctype}\r\ncontent-length: {len(body)}\r\n".encode()
            + b"cache-control: no-cache\r\ndate: "
            + http_date()
            + b"\r\n"
            + (b"connection: close\r\n" if close else b"")
            + b"\r\n"
        )
        try:
            writer.write(head if head_only else head + body)
            await writer.drain()
        except ConnectionError:
            pass


def _headers(lower_head: bytes) -> dict[bytes, bytes]:
    """The request's header fields (names lower case; a repeated name keeps its last)."""
    out = {}
    for line in lower_head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            out[name.strip()] = value.strip()
    return out
