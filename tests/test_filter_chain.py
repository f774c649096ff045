"""FilterChain (dfproxy/filters/__init__.py): hooks kept per filter that implements them, in
Envoy's order: request hooks in chain order, response hooks in reverse."""

from __future__ import annotations

from dfproxy.filters import CONTINUE, FilterChain, HttpFilter
from dfproxy.stream import Stream


class _Req(HttpFilter):
    def on_request_headers(self, stream: Stream) -> int:
        return CONTINUE


class _Both(HttpFilter):
    def on_request_headers(self, stream: Stream) -> int:
        return CONTINUE

    def on_response_headers(self, stream: Stream) -> int:
        return CONTINUE

    def on_response_body(self, stream: Stream, data: bytes, end: bool) -> bytes:
        return data


class _Upstream(HttpFilter):
    def on_upstream_host(self, stream: Stream) -> int:
        return CONTINUE


def test_hooks_are_kept_only_for_filters_that_implement_them() -> None:
    req, both, up = _Req(), _Both(), _Upstream()
    chain = FilterChain([req, both, up])
    assert chain.request_headers == (req, both)
    assert chain.upstream_host == (up,)
    assert chain.response_headers == (both,)
    assert FilterChain([]).response_body == ()


def test_response_hooks_run_in_reverse_chain_order() -> None:
    first, second = _Both(), _Both()
    chain = FilterChain([first, _Req(), second])
    assert chain.request_headers[0] is first and chain.request_headers[-1] is second
    assert chain.response_headers == (second, first)
    assert chain.response_body == (second, first)
