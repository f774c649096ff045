"""HTTP filters in Envoy's model: ordered, each may continue, pause, or answer locally.

A filter is a config-time object shared by every request of the routes it is attached to;
per-request state lives on the Stream (``stream.filter_state``). A chain keeps, per hook,
only the filters that implement it, so a hook nobody implements costs one empty-tuple test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dfproxy.stream import Stream

CONTINUE = 0
STOP = 1  # paused (the filter resumes the stream later) or answered locally


class HttpFilter:
    """Base class: every hook continues unchanged. Override the ones the filter needs."""

    name = "filter"

    def on_request_headers(self, stream: Stream) -> int:
        return CONTINUE

    def on_response_headers(self, stream: Stream) -> int:
        return CONTINUE

    def on_response_body(self, stream: Stream, data: bytes, end: bool) -> bytes:
        return data


class FilterChain:
    """The filters of one route, split per hook at config load."""

    __slots__ = ("filters", "request_headers", "response_headers", "response_body")

    def __init__(self, filters: Sequence[HttpFilter]) -> None:
        self.filters = tuple(filters)
        self.request_headers = tuple(
            f for f in filters if type(f).on_request_headers is not HttpFilter.on_request_headers
        )
        self.response_headers = tuple(
            f for f in filters if type(f).on_response_headers is not HttpFilter.on_response_headers
        )
        self.response_body = tuple(
            f for f in filters if type(f).on_response_body is not HttpFilter.on_response_body
        )
