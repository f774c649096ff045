"""What a route does once its filters have run: forward, answer directly, or redirect."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dfproxy.cluster import DfpCluster
    from dfproxy.stream import Stream


@dataclass(frozen=True)
class ForwardAction:
    """Send the request (or the CONNECT tunnel) to the host the DFP filter resolved."""

    cluster: DfpCluster

    def run(self, stream: Stream) -> None:
        stream.forward(self.cluster)


@dataclass(frozen=True)
class DirectResponseAction:
    """Gloo ``directResponseAction``: a fixed status and body."""

    status: int
    body: bytes = b""

    def run(self, stream: Stream) -> None:
        stream.send_local_reply(self.status, self.body, flag="", content_type=b"text/plain")


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
        if self.port_redirect:
            host = f"{host}:{self.port_redirect}"
        elif not self.host_redirect and stream.authority and not self.https_redirect:
            port = stream.authority.port
            if port != 80:
                host = f"{host}:{port}"
        path, _, query = stream.path_text().partition("?")
        if self.path_redirect is not None:
            path = self.path_redirect
        elif self.prefix_rewrite is not None and stream.route is not None:
            for m in stream.route.matchers:
                if m.prefix is not None and path.startswith(m.prefix):
                    path = self.prefix_rewrite + path[len(m.prefix) :]
                    break
        if query and not self.strip_query and "?" not in path:
            path = f"{path}?{query}"
        return f"{scheme}://{host}{path}".encode()

    def run(self, stream: Stream) -> None:
        stream.send_local_reply(
            self.response_code, b"", flag="", extra_headers=[(b"location", self.location(stream))]
        )
