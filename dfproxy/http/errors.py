"""The proxy's own errors: each maps to one client-visible status, body and response flag.

Library exceptions (c-ares, OSError from connect, parser errors) are translated into these at
the layer boundary, so the connection code only ever deals with ProxyError.
"""

from __future__ import annotations

from dfproxy.http import response_flags as rf


class ProxyError(Exception):
    """A request ends with a local reply. Subclasses fix the status, body and flag."""

    status = 503
    body = "Service Unavailable"
    flag = ""
    close = False  # the downstream connection cannot be reused afterwards

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.body)
        self.detail = detail


class BadRequest(ProxyError):
    status = 400
    body = "Bad Request"
    flag = rf.DOWNSTREAM_PROTOCOL_ERROR
    close = True

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.body = detail


class EmptyHost(ProxyError):
    status = 400
    body = "Empty host header"
    flag = ""


class NoRoute(ProxyError):
    status = 404
    body = ""
    flag = rf.NO_ROUTE_FOUND


class ConnectForbidden(ProxyError):
    """CONNECT to a route without connect termination: 403, empty body, then close (Envoy)."""

    status = 403
    body = ""
    close = True


class ForwardingLoop(ProxyError):
    """The destination is one of our own listeners (Squid refuses these too)."""

    status = 508
    body = "forwarding loop detected: the destination is this proxy's own listener"
    flag = rf.LOCAL_RESET


class DnsResolutionFailure(ProxyError):
    body = "DNS resolution failure"
    flag = rf.DNS_RESOLUTION_FAILED


class DnsCacheOverflow(ProxyError):
    body = "DNS cache overflow"


class PendingRequestOverflow(ProxyError):
    body = "Dynamic forward proxy pending request overflow"


class UpstreamConnectFailure(ProxyError):
    body = (
        "upstream connect error or disconnect/reset before headers. "
        "reset reason: connection failure"
    )
    flag = rf.UPSTREAM_CONNECTION_FAILURE


class UpstreamReset(ProxyError):
    body = (
        "upstream connect error or disconnect/reset before headers. "
        "reset reason: connection termination"
    )
    flag = rf.UPSTREAM_CONNECTION_TERMINATION


class UpstreamOverflow(ProxyError):
    body = "upstream connect error or disconnect/reset before headers. reset reason: overflow"
    flag = rf.UPSTREAM_OVERFLOW


class UpstreamProtocolError(ProxyError):
    status = 502
    body = "upstream connect error or disconnect/reset before headers. reset reason: protocol error"
    flag = rf.UPSTREAM_PROTOCOL_ERROR


class UpstreamTimeout(ProxyError):
    status = 504
    body = "upstream request timeout"
    flag = rf.UPSTREAM_REQUEST_TIMEOUT
