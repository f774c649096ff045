"""What a route does once its filters have run: forward, answer directly, or redirect."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dfproxy.http.headers import Headers, manipulate
from dfproxy.router import rewrite_prefix

if TYPE_CHECKING:
    from dfproxy.cluster import DfpCluster
    from dfproxy.stream import Stream


@dataclass(frozen=True)
class ForwardAction:
    """Send the request (or the CONNECT tunnel) to the host the DFP filter resolved."""

    cluster: DfpCluster

    def run(self, stream: Stream) -> None:
        stream.forward(self.cluster)


def _route_response_headers(stream: Stream, extra: Headers | None = None) -> Headers | None:
    """Envoy applies a route's response header manipulation to its direct responses too."""
    route = stream.route
    if route is None or not (route.response_headers_to_add or route.response_headers_to_remove):
        return extra
    return manipulate(extra or [], route.response_headers_to_add, route.response_headers_to_remove)


@dataclass(frozen=True)
class DirectResponseAction:
    """Gloo ``directResponseAction``: a fixed status and body."""

    status: int
    body: bytes = b""

    def run(self, stream: Stream) -> None:
        stream.send_local_reply(
            self.status, self.body, flag="", extra_headers=_route_response_headers(stream)
        )


@dataclass(frozen=True)
class RedirectAction:
    """Gloo ``redirectAction``: a 3xx with a Location built from the request."""

    host_redirect: str | None = None
    path_redirect: str | None = None
    prefix_rewrite: str | None = None
    https_redirect: bool = False
    strip_query: bool = False
    response_code: int = 301
    port_redirect: int | None = None

    def location(self, stream: Stream) -> bytes:
        scheme = "https" if self.https_redirect else "http"
        host = self.host_redirect or (stream.authority.host if stream.authority else "")
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        if self.port_redirect:
            host = f"{host}:{self.port_redirect}"
        elif not self.host_redirect and stream.authority is not None:
            # Envoy processRequestHost: the request's port stays unless it is the default
            # port of the scheme the redirect leaves (80 for http, 443 for https).
            port = stream.authority.port
            if port not in (80, 443):
                host = f"{host}:{port}"
        path, _, query = stream.path_text().partition("?")
        if self.path_redirect is not None:
            path = self.path_redirect
        elif self.prefix_rewrite is not None:
            raw = rewrite_prefix(path.encode("latin-1"), stream.matcher, self.prefix_rewrite)
            path = raw.decode("latin-1")
        if query and not self.strip_query and "?" not in path:
            path = f"{path}?{query}"
        return f"{scheme}://{host}{path}".encode()

    def run(self, stream: Stream) -> None:
        stream.send_local_reply(
            self.response_code,
            b"",
            flag="",
            extra_headers=_route_response_headers(stream, [(b"location", self.location(stream))]),
        )
