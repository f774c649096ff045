"""A stand-in for ``python -m dfproxy run`` that only speaks the start-up protocol, used to
test ``ProxyProcess`` itself (tests/test_support.py) without the real proxy.

Accepts the same flags; writes the ports file; admin ``GET /ready`` -> 200; every request
on the listen port gets ``502 fake proxy`` and one access-log line. ``FAKE_PROXY_MODE``:
``ok`` (default), ``exit`` (exits 3 at start-up), ``never-ready`` (/ready -> 503),
``ignore-term`` (ignores SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys


def append_line(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


def write_atomically(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


async def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("command")
    ap.add_argument("--listen", required=True)
    ap.add_argument("--admin", required=True)
    ap.add_argument("--ports-file", required=True)
    ap.add_argument("--dns-resolver")
    ap.add_argument("--event-loop")
    ap.add_argument("--log-level")
    ap.add_argument("--access-log")
    args, _unknown = ap.parse_known_args(argv)
    mode = os.environ.get("FAKE_PROXY_MODE", "ok")
    print(f"fake proxy starting: {argv}", file=sys.stderr, flush=True)
    if mode == "exit":
        print("fatal: configured to fail", file=sys.stderr, flush=True)
        return 3
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def read_head(reader: asyncio.StreamReader) -> bytes:
        try:
            return await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return b""

    async def answer(writer: asyncio.StreamWriter, status: str, body: bytes) -> None:
        head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        writer.write(head.encode() + body)
        try:
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    async def on_proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        if head and args.access_log:
            append_line(args.access_log, json.dumps({"request": head.split(b"\r\n")[0].decode()}))
        await answer(writer, "502 Bad Gateway", b"fake proxy\n")

    async def on_admin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        if head.startswith(b"GET /ready "):
            if mode == "never-ready":
                await answer(writer, "503 Service Unavailable", b"not ready\n")
            else:
                await answer(writer, "200 OK", b"ready\n")
        else:
            await answer(writer, "404 Not Found", b"")

    def hostport(s: str) -> tuple[str, int]:
        host, _, port = s.rpartition(":")
        return host, int(port)

    proxy_srv = await asyncio.start_server(on_proxy, *hostport(args.listen))
    port = proxy_srv.sockets[0].getsockname()[1]
    ports: dict[str, object] = {"listeners": {"gateway-proxy": port}, "listen": port}
    servers = [proxy_srv]
    if args.admin != "none":
        admin_srv = await asyncio.start_server(on_admin, *hostport(args.admin))
        ports["admin"] = admin_srv.sockets[0].getsockname()[1]
        servers.append(admin_srv)
    write_atomically(args.ports_file, json.dumps(ports))
    await stop.wait()
    for srv in servers:
        srv.close()
        await srv.wait_closed()
    print("fake proxy stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
