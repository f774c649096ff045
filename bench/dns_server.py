"""Tiny authoritative DNS server for the benchmark (loopback only).

Answers every ``A`` query for a name under ``bench.test.`` with 127.0.0.1 (TTL 300), answers
other record types under that zone with an empty NOERROR (plus an SOA for negative caching),
and everything else with NXDOMAIN.  It counts the queries it receives, by type and by name, and
serves the counters as JSON over HTTP on a second loopback port: ``GET /stats`` (add
``?names=1`` for the per-name counts).

Once both sockets are bound it writes ``{"dns_host", "dns_port", "stats_port", "pid"}`` to the
``--ready-file`` so that the harness can find the ports (``--port 0`` picks a free port).
Exit status 2 means the DNS socket could not be bound.

Run: ``python bench/dns_server.py --host 127.0.0.153 --port 53 --ready-file /tmp/x.json``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType

from dnslib import QTYPE, RCODE, RR, SOA, A, DNSLabel, DNSRecord  # type: ignore[import-untyped]

ZONE = DNSLabel("bench.test.")
ANSWER_IP = "127.0.0.1"
TTL = 300


@dataclass
class Stats:
    """Query counters, shared between the UDP loop and the HTTP stats thread."""

    total: int = 0
    errors: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    by_name: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, name: str, qtype: str) -> None:
        with self.lock:
            self.total += 1
            self.by_type[qtype] += 1
            self.by_name[name] += 1

    def snapshot(self, names: bool) -> dict[str, object]:
        with self.lock:
            out: dict[str, object] = {
                "total": self.total,
                "errors": self.errors,
                "by_type": dict(self.by_type),
                "unique_names": len(self.by_name),
            }
            if names:
                out["by_name"] = dict(self.by_name)
        return out


def build_reply(request: DNSRecord) -> DNSRecord:
    """The answer to one query (first question only, as every resolver sends)."""
    reply = request.reply()
    reply.header.aa = 1
    q = request.q
    if not q.qname.matchSuffix(ZONE):
        reply.header.rcode = RCODE.NXDOMAIN
        return reply
    if q.qtype == QTYPE.A:
        reply.add_answer(RR(q.qname, QTYPE.A, rdata=A(ANSWER_IP), ttl=TTL))
    else:
        soa = SOA("ns.bench.test.", "admin.bench.test.", (1, 3600, 600, 86400, TTL))
        reply.add_auth(RR(ZONE, QTYPE.SOA, rdata=soa, ttl=TTL))
    return reply


def serve_udp(sock: socket.socket, stats: Stats) -> None:
    """Answer queries forever (single thread: the parse/pack cost is tiny)."""
    while True:
        data, addr = sock.recvfrom(4096)
        try:
            request = DNSRecord.parse(data)
            stats.record(str(request.q.qname).lower(), QTYPE.get(request.q.qtype))
            sock.sendto(build_reply(request).pack(), addr)
        except Exception:  # a malformed packet must not stop the server
            with stats.lock:
                stats.errors += 1


def make_stats_handler(stats: Stats) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if not self.path.startswith("/stats"):
                self.send_error(404)
                return
            body = json.dumps(stats.snapshot(names="names=1" in self.path)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            return

    return Handler


def bind_udp(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((host, port))
    return sock


def write_ready(path: Path, info: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(path)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.153")
    p.add_argument("--port", type=int, default=53)
    p.add_argument("--stats-host", default="127.0.0.1")
    p.add_argument("--stats-port", type=int, default=0)
    p.add_argument("--ready-file", type=Path, required=True)
    return p.parse_args(argv)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if not args.host.startswith("127.") or not args.stats_host.startswith("127."):
        print("refusing to bind outside 127.0.0.0/8", file=sys.stderr)
        return 2
    try:
        udp = bind_udp(args.host, args.port)
    except OSError as exc:
        print(f"cannot bind {args.host}:{args.port}/udp: {exc}", file=sys.stderr)
        return 2
    stats = Stats()
    http = ThreadingHTTPServer((args.stats_host, args.stats_port), make_stats_handler(stats))
    http.daemon_threads = True
    threading.Thread(target=http.serve_forever, daemon=True).start()
    signal.signal(signal.SIGTERM, _exit_on_signal)
    info = {
        "dns_host": args.host,
        "dns_port": udp.getsockname()[1],
        "stats_port": http.server_address[1],
        "pid": os.getpid(),
    }
    write_ready(args.ready_file, info)
    print(f"dns_server ready: {json.dumps(info)}", flush=True)
    try:
        serve_udp(udp, stats)
    finally:
        http.shutdown()
        udp.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
