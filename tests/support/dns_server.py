"""A real, test-controlled DNS server on 127.0.0.1 (UDP and TCP on the same port).

Built on dnslib's ``DNSServer`` (threaded socketserver: every UDP query and every TCP
connection gets its own thread, so a delayed answer never blocks other queries). TCP
connections may carry several (pipelined) queries, as c-ares does.

    dns = DNSTestServer().start()
    dns.set("api.example.test", a=["127.0.0.1"], aaaa=["::1"], ttl=5)
    dns.set_sequence("flip.test", [{"a": ["127.0.0.1"]}, {"a": ["127.0.0.2"]}])
    dns.set_error("gone.test", "NXDOMAIN")
    dns.set_delay("slow.test", 2.0)
    ...
    dns.address   # "127.0.0.1:PORT" -> the proxy's --dns-resolver
    dns.stop()

Resolution order for a query (name, qtype): a rule set for exactly that qtype, then a rule
for the name (all qtypes), then the wildcard (every name *under* ``wildcard_suffix``
answers ``A 127.0.0.1`` and has no AAAA records by default), else NXDOMAIN.
Names are case-insensitive and compared without the trailing dot.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from dnslib import AAAA, CNAME, QTYPE, RCODE, RR, A, DNSError, DNSRecord
from dnslib.server import DNSLogger, DNSServer
from dnslib.server import TCPServer as _DnslibTCPServer
from dnslib.server import UDPServer as _DnslibUDPServer

__all__ = ["Answer", "DNSTestServer", "Query"]

RCODES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED")
STOP_TIMEOUT = 5.0


class Query(NamedTuple):
    """One query as received: normalised name, qtype name ("A", "AAAA", ...), monotonic time."""

    name: str
    qtype: str
    time: float


class LoggedQuery(NamedTuple):
    name: str
    qtype: str
    time: float
    protocol: str  # "udp" | "tcp"


@dataclass(frozen=True)
class Answer:
    """What the server answers for a name. ``a``/``aaaa`` empty -> NOERROR with no records."""

    a: tuple[str, ...] = ()
    aaaa: tuple[str, ...] = ()
    ttl: int = 60
    rcode: str = "NOERROR"
    drop: bool = False
    delay: float = 0.0
    cname: str | None = None

    @classmethod
    def from_spec(cls, spec: Answer | Mapping[str, Any]) -> Answer:
        """Build from a dict: keys a, aaaa, ttl, error|rcode, empty, drop, delay, cname."""
        if isinstance(spec, Answer):
            return spec
        unknown = set(spec) - {
            "a",
            "aaaa",
            "ttl",
            "error",
            "rcode",
            "empty",
            "drop",
            "delay",
            "cname",
        }
        if unknown:
            raise ValueError(f"unknown answer keys: {sorted(unknown)}")
        rcode = str(spec.get("error", spec.get("rcode", "NOERROR"))).upper()
        if rcode not in RCODES:
            raise ValueError(f"unknown rcode {rcode!r}")
        if spec.get("empty"):
            return cls(ttl=int(spec.get("ttl", 60)), delay=float(spec.get("delay", 0.0)))
        cname = spec.get("cname")
        return cls(
            a=tuple(spec.get("a") or ()),
            aaaa=tuple(spec.get("aaaa") or ()),
            ttl=int(spec.get("ttl", 60)),
            rcode=rcode,
            drop=bool(spec.get("drop", False)),
            delay=float(spec.get("delay", 0.0)),
            cname=_norm(cname) if cname else None,
        )


@dataclass
class _Rule:
    answers: list[Answer]
    cursors: dict[str, int] = field(default_factory=dict)  # qtype -> next index

    def next(self, qtype: str) -> Answer:
        i = self.cursors.get(qtype, 0)
        self.cursors[qtype] = i + 1
        return self.answers[min(i, len(self.answers) - 1)]


def _norm(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _qtype_name(qtype: str | None) -> str | None:
    return None if qtype is None else qtype.upper()


class _UDPServer(_DnslibUDPServer):  # type: ignore[misc]
    owner: DNSTestServer

    def process_request(self, request: Any, client_address: Any) -> None:
        t = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="dns-udp-query",
            daemon=True,
        )
        self.owner._track(t)
        t.start()


class _TCPServer(_DnslibTCPServer):  # type: ignore[misc]
    owner: DNSTestServer

    def process_request(self, request: Any, client_address: Any) -> None:
        t = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="dns-tcp-conn",
            daemon=True,
        )
        self.owner._track(t)
        t.start()


class _Handler(socketserver.BaseRequestHandler):
    server: Any

    def handle(self) -> None:
        owner: DNSTestServer = self.server.owner
        if self.server.socket_type == socket.SOCK_STREAM:
            owner._serve_tcp_connection(self.request)
        else:
            data, sock = self.request
            owner._serve_udp_query(data, sock, self.client_address)


class _QuietLogger(DNSLogger):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(log="-request,-reply,-truncated,-error", prefix=False, logf=_noop)


def _noop(_msg: str) -> None:
    return None


class DNSTestServer:
    """Thread-safe, run-time controllable DNS server. See the module docstring."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        wildcard_suffix: str | None = "test",
        wildcard_a: Sequence[str] = ("127.0.0.1",),
        wildcard_aaaa: Sequence[str] = (),
        wildcard_ttl: int = 60,
    ) -> None:
        self.host = host
        self._lock = threading.Lock()
        self._rules: dict[tuple[str, str | None], _Rule] = {}
        self._delays: dict[tuple[str, str | None], float] = {}
        self._log: list[LoggedQuery] = []
        self._wildcard: tuple[str, Answer] | None = None
        self._wildcard_defaults = (wildcard_suffix, wildcard_a, wildcard_aaaa, wildcard_ttl)
        self.set_wildcard(wildcard_suffix, a=wildcard_a, aaaa=wildcard_aaaa, ttl=wildcard_ttl)
        self.errors: list[BaseException] = []  # unexpected handler errors (should stay empty)
        self._stopping = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._tcp_conns: set[socket.socket] = set()
        self._udp: DNSServer | None = None
        self._tcp: DNSServer | None = None
        self._serve_threads: list[threading.Thread] = []
        self.port = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> DNSTestServer:
        last: OSError | None = None
        for _ in range(50):
            udp = DNSServer(
                self,
                address=self.host,
                port=0,
                logger=_QuietLogger(),
                handler=_Handler,
                server=_UDPServer,
            )
            port = udp.server.server_address[1]
            try:
                tcp = DNSServer(
                    self,
                    address=self.host,
                    port=port,
                    tcp=True,
                    logger=_QuietLogger(),
                    handler=_Handler,
                    server=_TCPServer,
                )
            except OSError as e:  # TCP port taken: try another UDP port
                last = e
                udp.server.server_close()
                continue
            break
        else:
            raise RuntimeError(f"could not bind UDP+TCP on one port: {last}")
        for srv in (udp, tcp):
            srv.server.owner = self
            t = threading.Thread(
                target=srv.server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"dns-serve-{port}",
                daemon=True,
            )
            t.start()
            self._serve_threads.append(t)
        self._udp, self._tcp, self.port = udp, tcp, port
        return self

    def stop(self) -> None:
        """Stop serving, close every socket, join every thread (bounded)."""
        if self._udp is None or self._tcp is None:
            return
        self._stopping.set()
        for srv in (self._udp, self._tcp):
            srv.server.shutdown()
        with self._lock:
            for conn in self._tcp_conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + STOP_TIMEOUT
        for t in [*self._serve_threads, *self._snapshot_threads()]:
            t.join(max(0.0, deadline - time.monotonic()))
        for srv in (self._udp, self._tcp):
            srv.server.server_close()
        alive = [t.name for t in [*self._serve_threads, *self._snapshot_threads()] if t.is_alive()]
        self._udp = self._tcp = None
        if alive:
            raise RuntimeError(f"DNS server threads did not stop: {alive}")

    def __enter__(self) -> DNSTestServer:
        return self.start() if self._udp is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT`` -- the value for the proxy's ``--dns-resolver``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    # ------------------------------------------------------------------ control
    def set(
        self,
        name: str,
        a: Iterable[str] = (),
        aaaa: Iterable[str] = (),
        ttl: int = 60,
        *,
        cname: str | None = None,
        qtype: str | None = None,
    ) -> None:
        """Answer ``name`` with these records (replaces earlier rules for the name, or only
        for ``qtype`` if given). Empty ``a`` and ``aaaa`` -> NOERROR/no data."""
        spec = {"a": list(a), "aaaa": list(aaaa), "ttl": ttl, "cname": cname}
        self._put(name, qtype, [Answer.from_spec(spec)])

    def set_sequence(
        self,
        name: str,
        answers: Sequence[Answer | Mapping[str, Any]],
        *,
        qtype: str | None = None,
    ) -> None:
        """Answers consumed in order, one per query, counted separately per qtype (the
        n-th A query gets ``answers[n]``, the n-th AAAA query too); the last one repeats.
        Each entry is a dict with keys a, aaaa, ttl, error, empty, drop, delay, cname."""
        if not answers:
            raise ValueError("empty sequence")
        self._put(name, qtype, [Answer.from_spec(x) for x in answers])

    def set_error(self, name: str, rcode: str = "NXDOMAIN", *, qtype: str | None = None) -> None:
        """Answer with an error rcode: NXDOMAIN, SERVFAIL, REFUSED (also FORMERR, NOTIMP)."""
        self._put(name, qtype, [Answer.from_spec({"error": rcode})])

    def set_empty(self, name: str, *, qtype: str | None = None, ttl: int = 60) -> None:
        """NOERROR with an empty answer section (NODATA)."""
        self._put(name, qtype, [Answer(ttl=ttl)])

    def set_drop(self, name: str, *, qtype: str | None = None) -> None:
        """Never answer (the query is logged, then ignored)."""
        self._put(name, qtype, [Answer(drop=True)])

    def set_delay(self, name: str, seconds: float, *, qtype: str | None = None) -> None:
        """Delay every answer for ``name`` (on top of whatever it answers); 0 removes it.
        The sleep happens in the query's own thread and ends early on ``stop()``."""
        key = (_norm(name), _qtype_name(qtype))
        with self._lock:
            if seconds > 0:
                self._delays[key] = float(seconds)
            else:
                self._delays.pop(key, None)

    def set_wildcard(
        self,
        suffix: str | None,
        a: Iterable[str] = ("127.0.0.1",),
        aaaa: Iterable[str] = (),
        ttl: int = 60,
    ) -> None:
        """Every name strictly under ``suffix`` answers these records; ``None`` disables."""
        with self._lock:
            if suffix is None:
                self._wildcard = None
            else:
                self._wildcard = (_norm(suffix), Answer(a=tuple(a), aaaa=tuple(aaaa), ttl=ttl))

    def clear(self, name: str) -> None:
        """Forget every rule and delay for ``name`` (it falls back to wildcard/NXDOMAIN)."""
        n = _norm(name)
        with self._lock:
            for d in (self._rules, self._delays):
                for key in [k for k in d if k[0] == n]:
                    del d[key]

    def reset(self) -> None:
        """Back to the initial state: no rules, no delays, default wildcard, empty log."""
        with self._lock:
            self._rules.clear()
            self._delays.clear()
            self._log.clear()
        suffix, a, aaaa, ttl = self._wildcard_defaults
        self.set_wildcard(suffix, a=a, aaaa=aaaa, ttl=ttl)

    def _put(self, name: str, qtype: str | None, answers: list[Answer]) -> None:
        n, qt = _norm(name), _qtype_name(qtype)
        with self._lock:
            if qt is None:  # a whole-name rule replaces the per-qtype ones
                for key in [k for k in self._rules if k[0] == n]:
                    del self._rules[key]
            self._rules[(n, qt)] = _Rule(answers)

    # ------------------------------------------------------------------ query log
    @property
    def queries(self) -> list[Query]:
        """Snapshot of (name, qtype, monotonic time) for every query received, in order."""
        with self._lock:
            return [Query(q.name, q.qtype, q.time) for q in self._log]

    @property
    def query_log(self) -> list[LoggedQuery]:
        """Like ``queries`` but with the transport ("udp"/"tcp") too."""
        with self._lock:
            return list(self._log)

    def count(
        self, name: str | None = None, qtype: str | None = None, *, protocol: str | None = None
    ) -> int:
        """Number of queries received for ``name`` (any name if None), optionally by qtype
        ("A", "AAAA", ...) and transport ("udp"/"tcp")."""
        n, qt = (_norm(name) if name is not None else None), _qtype_name(qtype)
        with self._lock:
            return sum(
                1
                for q in self._log
                if (n is None or q.name == n)
                and (qt is None or q.qtype == qt)
                and (protocol is None or q.protocol == protocol)
            )

    def wait_for(
        self,
        name: str | None,
        count: int = 1,
        qtype: str | None = None,
        *,
        timeout: float = 5.0,
        protocol: str | None = None,
    ) -> int:
        """Wait until at least ``count`` matching queries arrived; returns the count
        (raises TimeoutError otherwise)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.count(name, qtype, protocol=protocol)
            if got >= count:
                return got
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{got} < {count} DNS queries for {name!r} {qtype or ''}")
            time.sleep(0.01)

    def reset_log(self) -> None:
        with self._lock:
            self._log.clear()

    # ------------------------------------------------------------------ serving
    def _track(self, t: threading.Thread) -> None:
        with self._lock:
            self._threads = {x for x in self._threads if x.is_alive()}
            self._threads.add(t)

    def _snapshot_threads(self) -> list[threading.Thread]:
        with self._lock:
            return list(self._threads)

    def _lookup(self, name: str, qtype: str) -> Answer | None:
        """Pick (and consume, for sequences) the answer. Caller holds the lock."""
        rule = self._rules.get((name, qtype)) or self._rules.get((name, None))
        if rule is not None:
            return rule.next(qtype)
        if self._wildcard is not None:
            suffix, answer = self._wildcard
            if name.endswith("." + suffix):
                return answer
        return None

    def _answer(self, data: bytes, protocol: str) -> tuple[DNSRecord, DNSRecord] | None:
        """Returns (request, reply) or None to stay silent."""
        request = DNSRecord.parse(data)
        qname = _norm(str(request.q.qname))
        qtype = str(QTYPE.get(request.q.qtype))
        with self._lock:
            self._log.append(LoggedQuery(qname, qtype, time.monotonic(), protocol))
            answer = self._lookup(qname, qtype)
            delay = self._delays.get((qname, qtype), self._delays.get((qname, None), 0.0))
        if answer is not None:
            delay += answer.delay
        if delay > 0 and self._stopping.wait(delay):
            return None
        if answer is not None and answer.drop:
            return None
        reply = request.reply()
        if answer is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return request, reply
        owner, seen = qname, {qname}
        while True:
            if answer.rcode != "NOERROR":
                reply.header.rcode = getattr(RCODE, answer.rcode)
                break
            if answer.cname is not None and qtype != "CNAME":
                rdata = CNAME(answer.cname + ".")
                reply.add_answer(RR(owner + ".", QTYPE.CNAME, rdata=rdata, ttl=answer.ttl))
                owner = answer.cname
                if owner in seen or len(seen) > 8:
                    break
                seen.add(owner)
                with self._lock:
                    target = self._lookup(owner, qtype)
                if target is None:
                    break  # dangling CNAME: NOERROR with just the CNAME
                answer = target
                continue
            if qtype == "A":
                for ip in answer.a:
                    reply.add_answer(RR(owner + ".", QTYPE.A, rdata=A(ip), ttl=answer.ttl))
            elif qtype == "AAAA":
                for ip in answer.aaaa:
                    reply.add_answer(RR(owner + ".", QTYPE.AAAA, rdata=AAAA(ip), ttl=answer.ttl))
            break
        return request, reply

    def _serve_udp_query(self, data: bytes, sock: socket.socket, addr: Any) -> None:
        try:
            result = self._answer(data, "udp")
            if result is None or self._stopping.is_set():
                return
            request, reply = result
            limit = 512
            for rr in request.ar:  # EDNS0 OPT: rclass is the requester's UDP payload size
                if rr.rtype == QTYPE.OPT:
                    limit = max(512, int(rr.rclass))
            packed = reply.pack()
            if len(packed) > limit:
                packed = reply.truncate().pack()
            sock.sendto(packed, addr)
        except (DNSError, OSError):
            pass
        except Exception as e:  # pragma: no cover - reported through .errors
            self.errors.append(e)

    def _serve_tcp_connection(self, conn: socket.socket) -> None:
        with self._lock:
            self._tcp_conns.add(conn)
        send_lock = threading.Lock()
        workers: list[threading.Thread] = []
        try:
            while not self._stopping.is_set():
                head = _recv_exact(conn, 2)
                if head is None:
                    break
                msg = _recv_exact(conn, struct.unpack("!H", head)[0])
                if msg is None:
                    break
                w = threading.Thread(
                    target=self._serve_tcp_query,
                    args=(conn, msg, send_lock),
                    name="dns-tcp-query",
                    daemon=True,
                )
                w.start()
                workers.append(w)
        except OSError:
            pass
        finally:
            deadline = time.monotonic() + STOP_TIMEOUT
            for w in workers:
                w.join(max(0.0, deadline - time.monotonic()))
            with self._lock:
                self._tcp_conns.discard(conn)

    def _serve_tcp_query(self, conn: socket.socket, msg: bytes, send_lock: threading.Lock) -> None:
        try:
            result = self._answer(msg, "tcp")
            if result is None or self._stopping.is_set():
                return
            packed = result[1].pack()
            with send_lock:
                conn.sendall(struct.pack("!H", len(packed)) + packed)
        except (DNSError, OSError):
            pass
        except Exception as e:  # pragma: no cover
            self.errors.append(e)


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def query(
    address: str,
    name: str,
    qtype: str = "A",
    *,
    tcp: bool = False,
    timeout: float = 2.0,
) -> DNSRecord:
    """Send one query to ``host:port`` with dnslib's client and parse the reply (test helper)."""
    host, _, port = address.rpartition(":")
    q = DNSRecord.question(name, qtype)
    return DNSRecord.parse(q.send(host.strip("[]"), int(port), tcp=tcp, timeout=timeout))
