"""Access log: one line per request or tunnel, Envoy's default format or JSON.

Envoy's default format (``docs/.../access_log/usage.rst``):
[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%"
%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"

Lines are buffered and flushed by a timer (once a second) or when the buffer is large, so a
request costs a string format, never a write syscall. The interval is a hidden command-line
option (``--access-log-flush-interval``) so the test suite does not wait a second per check.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import IO, Protocol

FLUSH_INTERVAL = 1.0
FLUSH_BYTES = 64 * 1024
RECENT_ENTRIES = 100


@dataclass(slots=True)
class LogEntry:
    start_time: float  # epoch seconds
    method: str
    path: str
    protocol: str
    status: int
    flags: str
    bytes_received: int
    bytes_sent: int
    duration_ms: int
    forwarded_for: str | None
    user_agent: str | None
    request_id: str | None
    authority: str | None
    upstream_host: str | None
    upstream_address: str | None = None
    details: str | None = None
    downstream_remote_address: str | None = None
    proxy_user: str | None = None  # set by the proxy_auth filter


def _iso(ts: float) -> str:
    ms = int(ts * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{ms:03d}Z"


def format_envoy(e: LogEntry) -> str:
    """One line in Envoy's default format ("-" for a missing value)."""
    return (
        f'[{_iso(e.start_time)}] "{e.method} {e.path or "-"} {e.protocol}" '
        f"{e.status} {e.flags or '-'} {e.bytes_received} {e.bytes_sent} {e.duration_ms} - "
        f'"{e.forwarded_for or "-"}" "{e.user_agent or "-"}" "{e.request_id or "-"}" '
        f'"{e.authority or "-"}" "{e.upstream_host or "-"}"\n'
    )


def entry_dict(e: LogEntry) -> dict[str, object]:
    """The entry as the JSON format's object (Envoy's command-operator names, lower case)."""
    return {
        "start_time": _iso(e.start_time),
        "method": e.method,
        "path": e.path or None,
        "protocol": e.protocol,
        "response_code": e.status,
        "response_flags": e.flags or "-",
        "response_code_details": e.details,
        "bytes_received": e.bytes_received,
        "bytes_sent": e.bytes_sent,
        "duration": e.duration_ms,
        "x_forwarded_for": e.forwarded_for,
        "user_agent": e.user_agent,
        "request_id": e.request_id,
        "authority": e.authority,
        "upstream_host": e.upstream_host,
        "upstream_address": e.upstream_address,
        "downstream_remote_address": e.downstream_remote_address,
        "proxy_user": e.proxy_user,
    }


def format_json(e: LogEntry) -> str:
    """One JSON object per line, Envoy's command-operator names in lower case."""
    return json.dumps(entry_dict(e), separators=(",", ":")) + "\n"


class LogSink(Protocol):
    """Where a finished request's entry goes: the access log, or the dashboard's recent
    requests while nobody configured a log (dfproxy.recent)."""

    def log(self, entry: LogEntry) -> None: ...


class AccessLog:
    """Buffered writer of access-log lines to a file or stdout ("-")."""

    def __init__(
        self, path: str, fmt: str = "envoy", flush_interval: float = FLUSH_INTERVAL
    ) -> None:
        self.path = path
        self.flush_interval = flush_interval
        self.format = format_json if fmt == "json" else format_envoy
        self._file: IO[str] = sys.stdout if path == "-" else open(path, "a", encoding="utf-8")  # noqa: SIM115
        self._buffer: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        # The last entries, for the dashboard (dfproxy.recent): one deque append per request.
        self.recent: deque[LogEntry] = deque(maxlen=RECENT_ENTRIES)

    def log(self, entry: LogEntry) -> None:
        self.recent.append(entry)
        line = self.format(entry)
        self._buffer.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(self.flush_interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        if self._buffer:
            self._file.write("".join(self._buffer))
            self._file.flush()
            self._buffer.clear()
            self._size = 0

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        if self._file is not sys.stdout:
            self._file.close()
