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

    details = ""  # Envoy's %RESPONSE_CODE_DETAILS%; "{}" gets the detail text

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.body)
        self.detail = detail

    @property
    def code_details(self) -> str:
        """Envoy's response code details for this error (access log)."""
        if "{}" in self.details:
            return self.details.replace("{}", "{" + (self.detail or "") + "}")
        return self.details or self.detail or self.body


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
    details = "empty_host_header"


class NoRoute(ProxyError):
    status = 404
    body = ""
    flag = rf.NO_ROUTE_FOUND
    details = "route_not_found"


class ConnectForbidden(ProxyError):
    """CONNECT to a route without connect termination: 403, empty body, then close (Envoy)."""

    status = 403
    body = ""
    close = True
    details = "upgrade_failed"


class ForwardingLoop(ProxyError):
    """The destination is one of our own listeners (Squid refuses these too)."""

    status = 508
    body = "forwarding loop detected: the destination is this proxy's own listener"
    flag = rf.LOCAL_RESET
    details = "forwarding_loop_detected"


class DnsResolutionFailure(ProxyError):
    body = "DNS resolution failure"
    flag = rf.DNS_RESOLUTION_FAILED
    details = "dns_resolution_failure{}"


class DnsCacheOverflow(ProxyError):
    body = "DNS cache overflow"
    details = "dns_cache_overflow"


class PendingRequestOverflow(ProxyError):
    body = "Dynamic forward proxy pending request overflow"
    details = "dynamic_forward_proxy_pending_request_overflow"


class UpstreamConnectFailure(ProxyError):
    body = (
        "upstream connect error or disconnect/reset before headers. "
        "reset reason: connection failure"
    )
    flag = rf.UPSTREAM_CONNECTION_FAILURE
    details = "upstream_reset_before_response_started{connection_failure}"


class UpstreamTlsFailure(UpstreamConnectFailure):
    """The TLS handshake or the certificate check failed (Envoy adds the transport reason)."""

    details = "upstream_reset_before_response_started{connection_failure,TLS_error}"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.body = f"{UpstreamConnectFailure.body}, transport failure reason: {reason}"


class UpstreamReset(ProxyError):
    body = (
        "upstream connect error or disconnect/reset before headers. "
        "reset reason: connection termination"
    )
    flag = rf.UPSTREAM_CONNECTION_TERMINATION
    details = "upstream_reset_before_response_started{connection_termination}"


class UpstreamOverflow(ProxyError):
    body = "upstream connect error or disconnect/reset before headers. reset reason: overflow"
    flag = rf.UPSTREAM_OVERFLOW
    details = "upstream_reset_before_response_started{overflow}"


class UpstreamProtocolError(ProxyError):
    status = 502
    body = "upstream connect error or disconnect/reset before headers. reset reason: protocol error"
    flag = rf.UPSTREAM_PROTOCOL_ERROR
    details = "upstream_reset_before_response_started{protocol_error}"


class UpstreamTimeout(ProxyError):
    status = 504
    body = "upstream request timeout"
    flag = rf.UPSTREAM_REQUEST_TIMEOUT
    details = "response_timeout"
