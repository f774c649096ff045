"""The origin, the DNS server and the forward proxies under test, each in its own directory."""

from __future__ import annotations

import http.client
import json
import pwd
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.procs import Proc, Procs, free_port, wait_tcp, wait_until
from harness.system import find_tool

BENCH_DIR = Path(__file__).resolve().parent.parent
ROOT = BENCH_DIR.parent
TEMPLATES = BENCH_DIR / "peers"
LOOPBACK = "127.0.0.1"
DNS_HOST = "127.0.0.153"
PROXY_CPU = 0
LOAD_CPU = 1
PEERS = ("dfproxy", "nginx", "squid", "haproxy", "bare")


class StartError(Exception):
    """A server did not come up; the message says why."""


@dataclass
class Origin:
    port: int
    big_size: int
    proc: Proc


@dataclass
class Dns:
    host: str
    port: int
    stats_port: int
    proc: Proc

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stats(self) -> dict[str, object]:
        status, body = http_get(LOOPBACK, self.stats_port, "/stats", timeout=5.0)
        if status != 200:
            raise RuntimeError(f"DNS stats endpoint answered {status}")
        data: dict[str, object] = json.loads(body)
        return data


@dataclass
class Peer:
    """A running forward proxy.

    `unsupported`: scenario -> why it is skipped as n/a; `notes`: scenario -> explanation added
    when the scenario turns out n/a (e.g. CONNECT answered with an error).
    """

    name: str
    port: int
    proc: Proc
    unsupported: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    admin_port: int | None = None  # dfproxy's admin listener (/stats)


def http_get(host: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def render(template: str, dest: Path, values: dict[str, str | int | Path]) -> Path:
    """Fill the @@NAME@@ placeholders of bench/peers/<template> into `dest`."""
    text = (TEMPLATES / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", str(value))
    if "@@" in text:
        raise StartError(f"{template}: unfilled placeholder near {text[text.index('@@') :][:40]!r}")
    dest.write_text(text)
    return dest


def tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        raise StartError(f"{name} is not installed")
    return path


def _nginx_argv(workdir: Path, conf: Path) -> list[str]:
    return [tool("nginx"), "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf)]


def _fail(proc: Proc, what: str) -> StartError:
    state = "exited" if not proc.alive() else "not ready in time"
    return StartError(f"{what} {state}: {proc.tail(4) or 'no output'}")


def start_origin(
    procs: Procs, workdir: Path, big_mib: int, files: Mapping[str, bytes] | None = None
) -> Origin:
    """The origin nginx; `files` are served as they are under /files/NAME."""
    workdir.mkdir(parents=True)
    big = workdir / "big"
    with big.open("wb") as fh:
        fh.truncate(big_mib << 20)
    (workdir / "files").mkdir()
    for name, content in (files or {}).items():
        (workdir / "files" / name).write_bytes(content)
    port = free_port()
    conf = render("nginx-origin.conf", workdir / "nginx.conf", {"DIR": workdir, "PORT": port})
    proc = procs.start(
        "origin", _nginx_argv(workdir, conf), log_path=workdir / "out.log", cpu=LOAD_CPU
    )
    if not wait_tcp(proc, LOOPBACK, port):
        raise _fail(proc, "origin nginx")
    status, body = http_get(LOOPBACK, port, "/")
    if status != 200 or not body.startswith(b"hello"):
        raise StartError(f"origin answered {status} {body[:60]!r}")
    return Origin(port=port, big_size=big_mib << 20, proc=proc)


def _try_dns(procs: Procs, workdir: Path, port: int) -> Dns | None:
    ready = workdir / f"dns-ready-{port}.json"
    argv = [sys.executable, str(BENCH_DIR / "dns_server.py"), "--host", DNS_HOST]
    argv += ["--port", str(port), "--ready-file", str(ready)]
    proc = procs.start("dns", argv, log_path=workdir / "dns.log", cpu=LOAD_CPU)
    if not wait_until(ready.exists, proc, timeout=10.0):
        procs.stop(proc)
        return None
    info = json.loads(ready.read_text())
    return Dns(DNS_HOST, int(info["dns_port"]), int(info["stats_port"]), proc)


def start_dns(procs: Procs, workdir: Path) -> Dns:
    """The DNS server on 127.0.0.153:53 if possible (Squid needs 53), else a free high port."""
    workdir.mkdir(parents=True)
    dns = _try_dns(procs, workdir, 53) or _try_dns(procs, workdir, 0)
    if dns is None:
        raise StartError(f"DNS server did not start: {(workdir / 'dns.log').read_text()[-300:]}")
    return dns


def _start_dfproxy(
    procs: Procs, workdir: Path, origin: Origin, dns: Dns, extra: Sequence[str] = ()
) -> Peer:
    port, admin = free_port(), free_port()
    argv = [sys.executable, "-m", "dfproxy", "run", "--listen", f"{LOOPBACK}:{port}"]
    argv += ["--admin", f"{LOOPBACK}:{admin}", "--dns-resolver", dns.address]
    argv += ["--log-level", "warning", *extra]
    if not {"-c", "--config"} & set(extra):
        argv += ["--allow-destination", "127.0.0.0/8"]  # the embedded default denies loopback
    proc = procs.start("dfproxy", argv, log_path=workdir / "out.log", cpu=PROXY_CPU, cwd=ROOT)

    def ready() -> bool:
        try:
            return http_get(LOOPBACK, admin, "/ready", timeout=0.5)[0] == 200
        except OSError:
            return False

    if not wait_until(ready, proc, timeout=20.0):
        raise _fail(proc, "dfproxy")
    return Peer("dfproxy", port, proc, admin_port=admin)


@dataclass
class Redis:
    address: str
    proc: Proc


def start_redis(procs: Procs, workdir: Path) -> Redis:
    """A throw-away redis-server on a free loopback port (no persistence), on the load CPU."""
    workdir.mkdir(parents=True)
    port = free_port()
    argv = [tool("redis-server"), "--bind", LOOPBACK, "--port", str(port), "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(workdir)]
    proc = procs.start("redis", argv, log_path=workdir / "redis.log", cpu=LOAD_CPU)
    if not wait_tcp(proc, LOOPBACK, port):
        raise _fail(proc, "redis-server")
    return Redis(f"{LOOPBACK}:{port}", proc)


def _start_nginx(procs: Procs, workdir: Path, origin: Origin, dns: Dns) -> Peer:
    port = free_port()
    resolver = dns.host if dns.port == 53 else dns.address
    values: dict[str, str | int | Path] = {"DIR": workdir, "PORT": port, "DNS": resolver}
    conf = render("nginx-proxy.conf", workdir / "nginx.conf", values)
    proc = procs.start(
        "nginx", _nginx_argv(workdir, conf), log_path=workdir / "out.log", cpu=PROXY_CPU
    )
    if not wait_tcp(proc, LOOPBACK, port):
        raise _fail(proc, "nginx")
    notes = {
        "connect-bulk": "stock nginx has no CONNECT (needs the third-party proxy_connect patch)",
    }
    return Peer("nginx", port, proc, notes=notes)


def _squid_user() -> str:
    for name in ("proxy", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return "nobody"


def _start_squid(procs: Procs, workdir: Path, origin: Origin, dns: Dns) -> Peer:
    port = free_port()
    user = _squid_user()
    values: dict[str, str | int | Path] = {
        "DIR": workdir,
        "PORT": port,
        "DNS_HOST": dns.host,
        "ORIGIN_PORT": origin.port,
        "USER": user,
    }
    conf = render("squid.conf", workdir / "squid.conf", values)
    shutil.chown(workdir, user=user)
    argv = [tool("squid"), "-N", "-f", str(conf)]
    proc = procs.start("squid", argv, log_path=workdir / "out.log", cpu=PROXY_CPU)
    if not wait_tcp(proc, LOOPBACK, port, timeout=30.0):
        raise _fail(proc, "squid")
    unsupported: dict[str, str] = {}
    if dns.port != 53:
        why = f"Squid can only query DNS on port 53; the DNS server runs on {dns.address}"
        unsupported = {"hosts-1000": why, "hosts-10000": why}
    notes = {"keepalive-host": "Squid as a forward proxy rejects origin-form requests"}
    return Peer("squid", port, proc, unsupported, notes)


def _start_haproxy(procs: Procs, workdir: Path, origin: Origin, dns: Dns) -> Peer:
    port = free_port()
    values: dict[str, str | int | Path] = {"DIR": workdir, "PORT": port, "DNS": dns.address}
    conf = render("haproxy.cfg", workdir / "haproxy.cfg", values)
    argv = [tool("haproxy"), "-db", "-f", str(conf)]
    proc = procs.start("haproxy", argv, log_path=workdir / "out.log", cpu=PROXY_CPU)
    if not wait_tcp(proc, LOOPBACK, port):
        raise _fail(proc, "haproxy")
    notes = {
        "connect-bulk": "HAProxy has no CONNECT tunnelling: it forwards CONNECT to the origin",
    }
    return Peer("haproxy", port, proc, notes=notes)


def _start_bare(procs: Procs, workdir: Path, origin: Origin, dns: Dns) -> Peer:
    """bench/peers/bare_forwarder.py: the budget, not a peer anyone runs (see its docstring)."""
    port = free_port()
    argv = [sys.executable, str(TEMPLATES / "bare_forwarder.py"), str(port), dns.address]
    proc = procs.start("bare", argv, log_path=workdir / "out.log", cpu=PROXY_CPU, cwd=ROOT)
    if not wait_tcp(proc, LOOPBACK, port):
        raise _fail(proc, "bare")
    unsupported = {
        s: "the bare forwarder has no CONNECT, origin-form, Connection: close or streaming"
        for s in ("keepalive-host", "new-connection", "connect-bulk", "get-bulk")
    }
    return Peer("bare", port, proc, unsupported)


STARTERS = {
    "nginx": _start_nginx,
    "squid": _start_squid,
    "haproxy": _start_haproxy,
    "bare": _start_bare,
}


def start_peer(
    name: str,
    procs: Procs,
    workdir: Path,
    origin: Origin,
    dns: Dns,
    dfproxy_args: Sequence[str] = (),
) -> Peer:
    workdir.mkdir(parents=True)
    workdir.chmod(0o755)
    if name == "dfproxy":
        peer = _start_dfproxy(procs, workdir, origin, dns, dfproxy_args)
    else:
        peer = STARTERS[name](procs, workdir, origin, dns)
    time.sleep(0.2)  # let a process that dies right after binding show it
    if not peer.proc.alive():
        raise _fail(peer.proc, name)
    return peer
