"""The budget: the least a Python forward proxy on uvloop + httptools can do per request.

It parses each request and each response with httptools, drops hop-by-hop headers, resolves
each name once through c-ares (aiodns) and keeps it forever, and forwards over pooled
keep-alive upstream connections. It has no routing, filters, stats, timeouts, logging, error
answers, pipelining or streaming (it holds a response until it is complete), so it is not a
proxy anyone should run: bench/run.py runs it as the peer ``bare`` to show what our full path
spends on top of the interpreter, the event loop and the syscalls.

    python bench/peers/bare_forwarder.py PORT DNS_HOST:DNS_PORT
"""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import cast

import aiodns
import httptools
import uvloop

HOP_BY_HOP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade")
    + (b"proxy-authorization", b"proxy-authenticate", b"host")
)
Key = tuple[bytes, int]
idle: dict[Key, list[Upstream]] = {}
addresses: dict[bytes, str] = {}


def nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Upstream(asyncio.Protocol):
    def __init__(self, key: Key) -> None:
        self.key = key
        self.client: Downstream | None = None
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.reason = b""
        self.out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        nodelay(transport)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_message_begin(self) -> None:
        self.out = []

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in HOP_BY_HOP:
            self.out.append(name + b": " + value + b"\r\n")

    def on_headers_complete(self) -> None:
        status = b"HTTP/1.1 %d %s\r\n" % (self.parser.get_status_code(), self.reason)
        self.out.insert(0, status)
        self.out.append(b"\r\n")

    def on_body(self, body: bytes) -> None:
        self.out.append(body)

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        if client is not None and client.transport is not None:
            client.transport.write(b"".join(self.out))
        idle.setdefault(self.key, []).append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        conns = idle.get(self.key)
        if conns and self in conns:
            conns.remove(self)
        if self.client is not None and self.client.transport is not None:
            self.client.transport.close()


class Downstream(asyncio.Protocol):
    def __init__(self, resolver: aiodns.DNSResolver) -> None:
        self.resolver = resolver
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        nodelay(transport)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in HOP_BY_HOP:
            self.headers.append(name + b": " + value + b"\r\n")

    def on_headers_complete(self) -> None:
        url = httptools.parse_url(self.url)
        port = url.port or 80
        target = url.path + (b"?" + url.query if url.query else b"")
        head = b"%s %s HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n" % (
            self.parser.get_method(),
            target,
            url.host,
            port,
            b"".join(self.headers),
        )
        key = (url.host, port)
        conns = idle.get(key)
        if conns:
            upstream = conns.pop()
            upstream.client = self
            assert upstream.transport is not None
            upstream.transport.write(head)
        else:
            asyncio.ensure_future(self.connect(key, head))

    async def connect(self, key: Key, head: bytes) -> None:
        name = key[0]
        address = addresses.get(name)
        if address is None and name[:1].isdigit():
            address = addresses[name] = name.decode("ascii")  # an IPv4 literal
        if address is None:
            result = await self.resolver.query_dns(name.decode("ascii"), "A")
            address = addresses[name] = result.answer[0].data.addr
        loop = asyncio.get_running_loop()
        transport, upstream = await loop.create_connection(lambda: Upstream(key), address, key[1])
        upstream.client = self
        transport.write(head)


async def serve(port: int, dns: str) -> None:
    host, _, dns_port = dns.rpartition(":")
    resolver = aiodns.DNSResolver(nameservers=[host], udp_port=int(dns_port))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Downstream(resolver), "127.0.0.1", port, backlog=1024)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.install()
    asyncio.run(serve(int(sys.argv[1]), sys.argv[2]))
