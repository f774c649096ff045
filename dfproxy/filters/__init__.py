"""HTTP filters in Envoy's model: ordered, each may continue, pause, or answer locally.

A filter is a config-time object shared by every request of the routes it is attached to;
per-request state lives on the Stream (``stream.filter_state``, a dict made on first use:
``stream.state_dict()``; the JWT filter leaves the verified payload under ``"jwt_payload"``
for later filters). A request filter that must wait (a key fetch, an authorization call)
returns STOP and later calls ``stream.resume_filters()``, or answers with
``stream.send_local_reply`` / ``stream.local_error``. A chain keeps, per hook,
only the filters that implement it, so a hook nobody implements costs one empty-tuple test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from dfproxy.access_log import LogEntry
    from dfproxy.stream import Stream

CONTINUE: Final = 0
STOP: Final = 1  # paused (the filter resumes the stream later) or answered locally


class HttpFilter:
    """Base class: every hook continues unchanged. Override the ones the filter needs."""

    name = "filter"

    def on_request_headers(self, stream: Stream) -> int:
        return CONTINUE

    def on_upstream_host(self, stream: Stream) -> int:
        """After DNS, before any connect: ``stream.host`` holds the resolved addresses (also
        for IP literals and CONNECT). STOP after answering locally refuses the destination."""
        return CONTINUE

    def on_response_headers(self, stream: Stream) -> int:
        return CONTINUE

    def on_response_body(self, stream: Stream, data: bytes, end: bool) -> bytes:
        return data

    def on_log(self, stream: Stream, entry: LogEntry) -> None:
        """Before the access-log line is written: the filter may change ``entry`` (DLP)."""


class FilterChain:
    """The filters of one route, split per hook at config load."""

    __slots__ = (
        "filters",
        "request_headers",
        "upstream_host",
        "response_headers",
        "response_body",
        "log",
    )

    def __init__(self, filters: Sequence[HttpFilter]) -> None:
        self.filters = tuple(filters)
        self.request_headers = tuple(
            f for f in filters if type(f).on_request_headers is not HttpFilter.on_request_headers
        )
        self.upstream_host = tuple(
            f for f in filters if type(f).on_upstream_host is not HttpFilter.on_upstream_host
        )
        # Envoy runs encoder (response) filters in the reverse of the decoder order: the
        # filter that saw the request first sees the response last.
        backwards = filters[::-1]
        self.response_headers = tuple(
            f
            for f in backwards
            if type(f).on_response_headers is not HttpFilter.on_response_headers
        )
        self.response_body = tuple(
            f for f in backwards if type(f).on_response_body is not HttpFilter.on_response_body
        )
        self.log = tuple(f for f in filters if type(f).on_log is not HttpFilter.on_log)
