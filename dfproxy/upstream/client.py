"""The proxy's own HTTP/1.1 client, for calls a policy makes (a JWKS fetch, an authorization
service): it goes through a DFP cluster exactly as a forwarded request does, so the name is
resolved by the DNS cache, the connection comes from the pool (Happy Eyeballs, circuit
breakers, TLS when the cluster originates it) and goes back to it afterwards.

``fetch`` returns the whole response (bounded by ``max_body``) or raises ``ClientError`` with
a reason; it never blocks the loop and never waits longer than ``time_limit``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlsplit

from dfproxy.dns import cache as dns_cache
from dfproxy.http.authority import AuthorityError, parse_authority

if TYPE_CHECKING:
    from dfproxy.cluster import DfpCluster
    from dfproxy.dns.cache import DnsHostInfo
    from dfproxy.upstream.connection import UpstreamConnection

Headers = list[tuple[bytes, bytes]]

MAX_BODY = 1024 * 1024


class ClientError(Exception):
    """A call failed: DNS, connect, reset, timeout, oversized or malformed response."""


class Response(NamedTuple):
    status: int
    headers: Headers
    body: bytes

    def header(self, lname: bytes) -> bytes | None:
        for n, v in self.headers:
            if n.lower() == lname:
                return v
        return None


class _NoCork:
    """The sink's downstream side: there is none, so nothing to batch writes for."""

    def cork(self) -> None:
        pass

    def uncork(self) -> None:
        pass


_NO_CORK = _NoCork()


class _Collector:
    """A ResponseSink that gathers one response into a future."""

    def __init__(self, done: asyncio.Future[Response], max_body: int) -> None:
        self.done = done
        self.max_body = max_body
        self.status = 0
        self.headers: Headers = []
        self.body: list[bytes] = []
        self.size = 0
        self.upstream: UpstreamConnection | None = None

    @property
    def conn(self) -> _NoCork:
        return _NO_CORK

    def _fail(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_exception(ClientError(reason))

    def upstream_response_head(self, status: int, reason: bytes, headers: Headers) -> None:
        self.status = status
        self.headers = list(headers)

    def upstream_response_body(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_body:
            conn, self.upstream = self.upstream, None
            if conn is not None:
                conn.detach()
            self._fail(f"response body larger than {self.max_body} bytes")
            return
        self.body.append(data)

    def upstream_response_complete(self, trailers: Headers | None) -> None:
        self.upstream = None
        if not self.done.done():
            self.done.set_result(Response(self.status, self.headers, b"".join(self.body)))

    def upstream_upgraded(self, rest: bytes) -> None:
        # We never ask to upgrade: the connection is now a tunnel nobody reads. Close it, or
        # it keeps a max_connections slot of the cluster the proxy's own traffic uses.
        conn, self.upstream = self.upstream, None
        if conn is not None:
            conn.detach()
        self._fail("unexpected protocol upgrade")

    def upstream_reset(self, reason: str) -> None:
        self.upstream = None
        self._fail(f"upstream reset: {reason}")

    def upstream_pause_writing(self) -> None:
        pass

    def upstream_resume_writing(self) -> None:
        pass

    def tunnel_data(self, data: bytes) -> None:
        pass

    def tunnel_eof(self) -> None:
        pass


async def _host(cluster: DfpCluster, authority: str) -> DnsHostInfo:
    try:
        auth = parse_authority(authority, cluster.default_port)
    except AuthorityError as exc:
        raise ClientError(f"invalid host {authority!r}: {exc}") from None
    if auth.is_ip:
        return cluster.ip_host(auth)
    loop = asyncio.get_running_loop()
    resolved: asyncio.Future[DnsHostInfo] = loop.create_future()

    def waiter(info: DnsHostInfo) -> None:
        if not resolved.done():
            resolved.set_result(info)

    status, info = cluster.dns_cache.load(auth.key, auth.host, auth.port, waiter)
    if status == dns_cache.LOADING:
        assert info is not None
        try:
            info = await resolved
        except asyncio.CancelledError:
            cluster.dns_cache.cancel_wait(info, waiter)
            raise
    elif status != dns_cache.IN_CACHE:
        raise ClientError("DNS cache overflow")
    assert info is not None
    if not info.addresses:
        raise ClientError(f"DNS resolution failure for {auth.key}: {info.last_status}")
    return info


async def _connection(cluster: DfpCluster, host: DnsHostInfo) -> UpstreamConnection:
    pool = cluster.pool
    conn = pool.get_idle(host)
    if conn is not None:
        return conn
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[UpstreamConnection] = loop.create_future()

    def connected(c: UpstreamConnection | None, reason: str) -> None:
        if ready.done():
            if c is not None:
                c.close()  # the caller gave up meanwhile
        elif c is None:
            ready.set_exception(ClientError(f"connect to {host.key} failed: {reason}"))
        else:
            ready.set_result(c)

    if not pool.request(host, connected):
        raise ClientError("upstream overflow (max_pending_requests)")
    try:
        return await ready
    except asyncio.CancelledError:
        if ready.done() and not ready.cancelled() and ready.exception() is None:
            # Cancelled in the loop turn the connection arrived in (a time limit expiring
            # then): nobody will use it, and it holds a max_connections slot until closed.
            ready.result().close()
        else:
            pool.cancel(connected)
        raise


async def _exchange(
    cluster: DfpCluster,
    method: bytes,
    authority: str,
    target: bytes,
    headers: Headers,
    body: bytes,
    max_body: int,
    host_header: str | None = None,
) -> Response:
    host = await _host(cluster, authority)
    conn = await _connection(cluster, host)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Response] = loop.create_future()
    sink = _Collector(done, max_body)
    if not conn.attach(sink, method == b"HEAD"):
        raise ClientError("upstream sent bytes before the request")
    sink.upstream = conn
    host_value = (host_header or authority).encode("latin-1")
    lines = [b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (method, target, host_value)]
    lines.extend(b"%s: %s\r\n" % (n, v) for n, v in headers)
    if body or method in (b"POST", b"PUT", b"PATCH"):
        lines.append(b"content-length: %d\r\n" % len(body))
    lines.append(b"\r\n")
    conn.write(b"".join(lines) + body)
    conn.request_done = True  # the whole request is written: reusable after the response
    try:
        return await done
    except asyncio.CancelledError:
        if sink.upstream is not None:
            sink.upstream.detach()  # mid-exchange: the connection cannot be reused
        raise


async def fetch(
    cluster: DfpCluster,
    url: str,
    *,
    method: bytes = b"GET",
    headers: Headers | None = None,
    body: bytes = b"",
    time_limit: float = 5.0,
    max_body: int = MAX_BODY,
    host_header: str | None = None,
) -> Response:
    """Send one request to ``url`` (``http://host[:port]/path``; ``https://`` when the
    cluster originates TLS) through ``cluster`` and return the whole response.
    ``host_header`` replaces the Host value (the URL's authority still says where to go).

    Raises ClientError on any failure, including the timeout."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ClientError(f"expected an http:// or https:// URL, got {url!r}")
    if (parts.scheme == "https") != (cluster.pool.tls is not None):
        raise ClientError(
            f"{parts.scheme}:// needs a cluster {'with' if parts.scheme == 'https' else 'without'}"
            " upstream TLS (dynamicForwardProxy.sslConfig)"
        )
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        return await asyncio.wait_for(
            _exchange(
                cluster,
                method,
                parts.netloc,
                target.encode(),
                headers or [],
                body,
                max_body,
                host_header,
            ),
            time_limit,
        )
    except TimeoutError:
        raise ClientError(f"no response from {parts.netloc} within {time_limit:g} s") from None
