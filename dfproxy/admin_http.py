"""The admin port's HTTP/1.1 server: one handler per path, and the dashboard's static files.

Not on the hot path: asyncio streams, keep-alive, no request bodies. Shared by one process's
admin (``dfproxy.admin``) and the ``--workers`` supervisor's (``dfproxy.admin_supervisor``).
The dashboard (``/``) is three files in the package (``dfproxy/admin_ui/``), read once.
"""

from __future__ import annotations

import asyncio
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

    @staticmethod
    def _static(name: str, ctype: str) -> Handler:
        async def serve(q: Query) -> Reply:
            return 200, ctype, ui_file(name)

        return serve

    async def start(self, host: str, port: int) -> int:
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
                url = urlsplit(target)
                handler = self.routes.get(url.path)
                if handler is None:
                    status, ctype, body = 404, "text/plain", b"invalid path\n"
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
