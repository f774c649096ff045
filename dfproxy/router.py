"""Route selection: virtual hosts by domain (Envoy's order), then the first matching route.

Pure: a RouteTable is built at config load and ``select`` is a function of the request.
Domain order (Envoy ``VirtualHost.domains``): exact, then suffix wildcards (``*.foo.com``,
longest first), then prefix wildcards (``foo.*``, longest first), then ``*``. A wildcard
never matches the empty string. CONNECT matches on the ``host:port`` target.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dfproxy.filters import FilterChain


class Routable(Protocol):
    """What route matching reads of a request (dfproxy.stream.Stream; tests pass stand-ins)."""

    is_connect: bool
    method: bytes
    matcher: Matcher | None  # set by select(): the matcher that matched (prefixRewrite)

    def path_only(self) -> str: ...
    def query_params(self) -> dict[str, str]: ...
    def request_header_joined(self, lname: bytes) -> bytes | None: ...
    def route_host(self) -> str: ...


@dataclass(frozen=True)
class HeaderMatcher:
    name: bytes  # lower-case
    value: str = ""  # "" means present
    regex: bool = False
    invert: bool = False
    _pattern: re.Pattern[str] | None = None

    def matches(self, stream: Routable) -> bool:
        """Envoy HeaderUtility::matchHeaders: repeated headers are matched joined by ",";
        an absent header matches only an inverted presence matcher."""
        raw = stream.request_header_joined(self.name)
        present_match = not self.value and not self.regex
        if raw is None:
            return self.invert and present_match
        if present_match:
            return not self.invert
        text = raw.decode("latin-1")
        if self._pattern is not None:
            result = self._pattern.fullmatch(text) is not None
        else:
            result = text == self.value
        return result != self.invert


@dataclass(frozen=True)
class QueryMatcher:
    name: str
    value: str = ""
    regex: bool = False
    _pattern: re.Pattern[str] | None = None

    def matches(self, query: dict[str, str]) -> bool:
        if self.name not in query:
            return False
        if not self.value and not self.regex:
            return True
        got = query[self.name]
        if self._pattern is not None:
            return self._pattern.fullmatch(got) is not None
        return got == self.value


@dataclass(frozen=True)
class Matcher:
    """Gloo ``Matcher``: one path specifier plus header, query and method conditions."""

    prefix: str | None = None
    exact: str | None = None
    regex: re.Pattern[str] | None = None
    connect: bool = False
    case_sensitive: bool = True
    headers: tuple[HeaderMatcher, ...] = ()
    query: tuple[QueryMatcher, ...] = ()
    methods: frozenset[bytes] = frozenset()
    # prefix "/" and nothing else: every non-CONNECT request matches (the default route).
    any_request: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        trivial = (
            self.prefix == "/"
            and not self.connect
            and not (self.headers or self.query or self.methods)
        )
        object.__setattr__(self, "any_request", trivial)

    def matches(self, stream: Routable) -> bool:
        if self.any_request:
            return not stream.is_connect
        if self.connect:
            if not stream.is_connect:
                return False
        else:
            if stream.is_connect:
                return False  # HTTP/1.1 CONNECT has no path: only connectMatcher matches it
            path = stream.path_only()
            if self.prefix is not None:
                if self.case_sensitive:
                    if not path.startswith(self.prefix):
                        return False
                elif not path.lower().startswith(self.prefix.lower()):
                    return False
            elif self.exact is not None:
                if self.case_sensitive:
                    if path != self.exact:
                        return False
                elif path.lower() != self.exact.lower():
                    return False
            elif self.regex is not None and self.regex.fullmatch(path) is None:
                return False
        if self.methods and stream.method not in self.methods:
            return False
        for h in self.headers:
            if not h.matches(stream):
                return False
        if self.query:
            query = stream.query_params()
            for q in self.query:
                if not q.matches(query):
                    return False
        return True


def rewrite_prefix(path: bytes, matcher: Matcher | None, replacement: str) -> bytes:
    """Gloo prefixRewrite: replace the prefix the matching matcher matched (in any case when
    the matcher is case-insensitive). Other matchers (exact, regex) leave the path alone."""
    if matcher is None or matcher.prefix is None:
        return path
    n = len(matcher.prefix)
    text = path.decode("latin-1")
    head = text[:n] if matcher.case_sensitive else text[:n].lower()
    if head != (matcher.prefix if matcher.case_sensitive else matcher.prefix.lower()):
        return path
    return (replacement + text[n:]).encode("latin-1")


MATCH_ALL = Matcher(prefix="/")


RETRY_ON = frozenset(
    {"5xx", "gateway-error", "connect-failure", "reset", "retriable-4xx", "refused-stream"}
)


@dataclass(frozen=True)
class RetryPolicy:
    """Gloo RetryPolicy / Envoy retry_policy, with Envoy's meaning of each retryOn value."""

    retry_on: frozenset[str]
    num_retries: int = 1
    per_try_timeout: float = 0.0  # 0: only the route timeout
    base_interval: float = 0.025  # Envoy's default backoff: 25 ms base, 10x max
    max_interval: float = 0.25

    def retries_status(self, status: int) -> bool:
        on = self.retry_on
        if status >= 500 and "5xx" in on:
            return True
        if status in (502, 503, 504) and "gateway-error" in on:
            return True
        return status == 409 and "retriable-4xx" in on

    def retries_reset(self, connect_failure: bool) -> bool:
        """Envoy wouldRetryFromReset: 5xx, gateway-error and reset cover every reset (a
        connect failure included); connect-failure covers connect failures only.
        refused-stream is an HTTP/2 condition and never applies to HTTP/1.1."""
        on = self.retry_on
        if "5xx" in on or "gateway-error" in on or "reset" in on:
            return True
        return connect_failure and "connect-failure" in on


@dataclass
class Route:
    """A matched route: its action, its filter chain and its options."""

    name: str
    matchers: Sequence[Matcher]
    action: Any  # dfproxy.actions.*; typed loosely to keep this module free of I/O imports
    chain: FilterChain = field(default_factory=lambda: FilterChain(()))
    connect_terminate: bool = False
    websocket: bool = True
    timeout: float = 15.0
    prefix_rewrite: str | None = None
    retry: RetryPolicy | None = None
    host_rewrite: bytes | None = None
    request_headers_to_add: list[tuple[bytes, bytes, bool]] = field(default_factory=list)
    request_headers_to_remove: frozenset[bytes] = frozenset()
    response_headers_to_add: list[tuple[bytes, bytes, bool]] = field(default_factory=list)
    response_headers_to_remove: frozenset[bytes] = frozenset()

    def __post_init__(self) -> None:
        # True when nothing touches responses on this route: the hot path checks one flag.
        self.plain_response = not (
            self.chain.response_headers
            or self.chain.response_body
            or self.response_headers_to_add
            or self.response_headers_to_remove
        )
        # The same for the forwarded request head (one attribute read instead of four).
        self.plain_request = not (
            self.request_headers_to_add
            or self.request_headers_to_remove
            or self.host_rewrite is not None
            or self.prefix_rewrite is not None
        )

    def matches(self, stream: Routable) -> bool:
        # A plain loop: any() over a generator allocates on every request.
        for m in self.matchers:  # noqa: SIM110
            if m.matches(stream):
                return True
        return False


@dataclass
class VirtualHost:
    name: str
    domains: Sequence[str]
    routes: Sequence[Route]

    def __post_init__(self) -> None:
        # The route that takes every non-CONNECT request when only CONNECT routes come
        # before it (the default config: connect, then prefix "/"): select() answers such
        # requests without a call per matcher.
        self.catch_all: tuple[Route, Matcher] | None = None
        for route in self.routes:
            if route.matchers and route.matchers[0].any_request:
                self.catch_all = (route, route.matchers[0])
            if not all(m.connect for m in route.matchers):
                break  # a route that may match plain requests: the scan would stop here

    def select(self, stream: Routable) -> Route | None:
        catch_all = self.catch_all
        if catch_all is not None and not stream.is_connect:
            stream.matcher = catch_all[1]
            return catch_all[0]
        for route in self.routes:
            for m in route.matchers:
                if m.matches(stream):
                    stream.matcher = m  # prefixRewrite replaces what this matcher matched
                    return route
        return None


class RouteTable:
    """Virtual hosts indexed for Envoy's domain search order."""

    def __init__(self, vhosts: Sequence[VirtualHost]) -> None:
        self.vhosts = list(vhosts)
        self.exact: dict[str, VirtualHost] = {}
        suffix: list[tuple[str, VirtualHost]] = []
        prefix: list[tuple[str, VirtualHost]] = []
        self.default: VirtualHost | None = None
        for vh in vhosts:
            for domain in vh.domains:
                d = domain.lower()
                if d == "*":
                    self.default = vh
                elif d.startswith("*"):
                    suffix.append((d[1:], vh))
                elif d.endswith("*"):
                    prefix.append((d[:-1], vh))
                else:
                    self.exact[d] = vh
        self.suffix = sorted(suffix, key=lambda p: -len(p[0]))
        self.prefix = sorted(prefix, key=lambda p: -len(p[0]))
        # The common case, one "*" virtual host, skips the domain search entirely.
        self.only_default = self.default is not None and not (self.exact or suffix or prefix)
        # ... and when it has a catch-all route (the default config), select() is two calls
        # shorter: -2,900 instructions per request (callgrind over bench/hotpath.py).
        self.catch_all = self.default.catch_all if self.only_default and self.default else None

    def find_vhost(self, host: str) -> VirtualHost | None:
        """The virtual host for a Host/authority value (lower-cased by the caller)."""
        if self.only_default:
            return self.default
        vh = self.exact.get(host)
        if vh is not None:
            return vh
        # Domains without a port also match a host:port (Envoy strips the port when no
        # domain lists it explicitly).
        bare = _strip_port(host)
        if bare != host:
            vh = self.exact.get(bare)
            if vh is not None:
                return vh
        for candidates in (self.suffix, self.prefix):
            for pattern, vh in candidates:
                for h in (host, bare):
                    if candidates is self.suffix:
                        if len(h) > len(pattern) and h.endswith(pattern):
                            return vh
                    elif len(h) > len(pattern) and h.startswith(pattern):
                        return vh
        return self.default

    def select(self, stream: Routable) -> Route | None:
        catch_all = self.catch_all
        if catch_all is not None and not stream.is_connect:
            stream.matcher = catch_all[1]
            return catch_all[0]
        vh = self.default if self.only_default else self.find_vhost(stream.route_host())
        if vh is None:
            return None
        return vh.select(stream)


def _strip_port(host: str) -> str:
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    colon = host.rfind(":")
    if colon > 0 and host[colon + 1 :].isdigit():
        return host[:colon]
    return host
