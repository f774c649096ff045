"""Envoy ext_authz over HTTP (the raw HTTP service), as pure functions: what the
authorization request carries, and what the service's answer decides.

The check request (Envoy ``ext_authz_http_impl.cc``, Gloo ``HttpService.Request``): the
client's method, ``pathPrefix`` + the client's path (query included), the client's Host, the
``allowedHeaders`` (matched by name, case-insensitively, or by ``allowedHeadersRegex``) plus
Authorization, then ``headersToAdd`` (replacing a client header of the same name), and
``Content-Length: 0``: no body. A CONNECT is checked as a GET of ``pathPrefix`` (or ``/``)
with ``x-forwarded-method: CONNECT`` and the CONNECT target as Host: an HTTP/1.1 server
cannot answer a CONNECT with a decision.

The answer: 200 allows, copying the ``allowedUpstreamHeaders`` of the response onto the
upstream request (replacing) and ``allowedUpstreamHeadersToAppend`` (appending); any other
status denies with that status, the service's body, and its headers: every one but Host and
framing when ``allowedClientHeaders`` is empty, else those plus WWW-Authenticate, Location
(Gloo: "are automatically added").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from dfproxy.http.headers import HOP_BY_HOP

Headers = list[tuple[bytes, bytes]]

# Headers of the service's answer that never go to the client: the proxy frames and dates
# its own reply.
_NOT_TO_CLIENT = HOP_BY_HOP | {b"content-length", b"host", b"date", b"server", b"content-type"}
_ALWAYS_TO_CLIENT = frozenset({b"www-authenticate", b"location"})


@dataclass(frozen=True)
class CheckConfig:
    """A listener's ext_authz settings, compiled once at config load."""

    server_uri: str  # http://host:port, no trailing slash
    path_prefix: str
    allowed_headers: frozenset[bytes]  # lower-case names, Authorization included
    allowed_regex: tuple[re.Pattern[bytes], ...]
    headers_to_add: tuple[tuple[bytes, bytes], ...]  # lower-case names
    upstream_headers: frozenset[bytes]
    upstream_append: frozenset[bytes]
    client_headers: frozenset[bytes] | None  # None: all but Host and framing
    user_id_header: bytes | None
    timeout: float
    failure_mode_allow: bool
    status_on_error: int
    cache_ttl: float
    cache_max: int
    stat_prefix: str

    def __hash__(self) -> int:
        return id(self)


class CheckRequest(NamedTuple):
    method: bytes
    url: str
    host: str
    headers: tuple[tuple[bytes, bytes], ...]

    @property
    def cache_key(self) -> tuple[bytes, str, str, tuple[tuple[bytes, bytes], ...]]:
        """Everything sent to the service: the same request gets the same decision."""
        return (self.method, self.url, self.host, self.headers)


class Decision(NamedTuple):
    allowed: bool
    status: int
    body: bytes
    content_type: bytes | None
    # Allowed: (lower-case name, value, append) for the upstream request. Denied: the
    # headers for the client.
    headers: tuple[tuple[bytes, bytes, bool], ...]

    @property
    def cacheable(self) -> bool:
        """Only 2xx and 4xx answers are remembered (a 5xx is the service's trouble)."""
        return 200 <= self.status < 300 or 400 <= self.status < 500


def _wanted(cfg: CheckConfig, lname: bytes) -> bool:
    if lname in cfg.allowed_headers:
        return True
    return any(rx.fullmatch(lname) for rx in cfg.allowed_regex)


def build_check(
    cfg: CheckConfig,
    method: bytes,
    path: bytes,
    host: bytes,
    request_headers: Headers,
    is_connect: bool,
) -> CheckRequest:
    """The authorization request for a client request."""
    added = {n for n, _ in cfg.headers_to_add}
    headers: list[tuple[bytes, bytes]] = []
    for name, value in request_headers:
        lname = name.lower()
        if lname == b"content-length" or lname in added:
            continue
        if _wanted(cfg, lname):
            headers.append((lname, value))
    headers.extend(cfg.headers_to_add)
    if is_connect:
        headers.append((b"x-forwarded-method", b"CONNECT"))
        method, target = b"GET", cfg.path_prefix or "/"
    else:
        target = cfg.path_prefix + path.decode("latin-1")
    if method not in (b"POST", b"PUT", b"PATCH"):
        headers.append((b"content-length", b"0"))  # the client adds it for these methods
    return CheckRequest(method, cfg.server_uri + target, host.decode("latin-1"), tuple(headers))


def decide(cfg: CheckConfig, status: int, headers: Headers, body: bytes) -> Decision:
    """What the service's answer means for the client request."""
    if status == 200:
        out: list[tuple[bytes, bytes, bool]] = []
        seen: set[bytes] = set()
        for name, value in headers:
            lname = name.lower()
            if lname in cfg.upstream_headers:
                # "coexistent headers will be overridden": the first value replaces the
                # client's, further values of the same answer are kept alongside.
                out.append((lname, value, lname in seen))
                seen.add(lname)
            elif lname in cfg.upstream_append:
                out.append((lname, value, True))
        return Decision(True, status, b"", None, tuple(out))
    content_type: bytes | None = None
    client: list[tuple[bytes, bytes, bool]] = []
    allowed = cfg.client_headers
    for name, value in headers:
        lname = name.lower()
        if lname == b"content-type":
            content_type = value
        elif lname in _NOT_TO_CLIENT:
            continue
        elif allowed is None or lname in allowed or lname in _ALWAYS_TO_CLIENT:
            client.append((lname, value, True))
    return Decision(False, status, body, content_type, tuple(client))
