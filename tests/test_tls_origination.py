"""TLS origination by the DFP cluster (Gloo ``dynamicForwardProxy.sslConfig``; reference §7,
§8.2): the client speaks plain HTTP to the proxy (``curl -x proxy http://tls.test:PORT/``)
and the proxy speaks TLS to the origin.

Envoy's DFP cluster forces auto SNI and auto SAN validation:
  * SNI = the request's host without the port, never for an IP literal;
  * the certificate must name that host (DNS SAN; an IP SAN for an IP literal), else 503 and
    ``cluster.<name>.ssl.fail_verify_san``; a certificate that does not verify (expired,
    unknown CA) gives 503 and ``ssl.fail_verify_error``;
  * a connection whose verification failed is never used; pools are per SNI/SAN, so a
    connection opened for one name never serves another.
dfproxy extensions of the shape: ``sni`` fixes the SNI, ``verifySubjectAltName`` adds
accepted names, ``sslFiles.tlsCert/tlsKey`` present a client certificate,
``allowRenegotiation: true`` is refused.

Certificates are made per module with ``cryptography`` when it is importable, else with the
``openssl`` command line (the project's venv does not ship ``cryptography``); without
either the module is skipped.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dfproxy.config.gloo import ConfigError, load_paths
from tests.helpers import check_alive, module_dns_server, module_proxy
from tests.support.clients import RawClient
from tests.support.origin import _head
from tests.support.proxy import ProxyProcess
from tests.support.servers import ThreadedTCPServer
from tests.upstream_helpers import (
    CONNECT_FAILURE_BODY,
    assert_clean,
    cluster_stat,
    gateway,
    get,
    log_entry,
    start_proxy,
    write_config,
)

ProxyFactory = Callable[..., ProxyProcess]

HAVE_CRYPTOGRAPHY = importlib.util.find_spec("cryptography") is not None
OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(
    not HAVE_CRYPTOGRAPHY and OPENSSL is None,
    reason="needs the 'cryptography' package or the openssl command to make test certificates",
)


# ---------------------------------------------------------------------------- certificates
@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


class Pki:
    """A few CAs and leaf certificates in ``directory`` (EC P-256, short-lived)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.serial = 1000

    def ca(self, name: str) -> Issued:
        if HAVE_CRYPTOGRAPHY:
            return self._crypto_cert(name, None, (), (), ca=True, expired=False)
        out = Issued(self.dir / f"{name}.pem", self.dir / f"{name}.key")
        self._openssl(
            "req", "-x509", *self._newkey(out.key), "-out", str(out.cert), "-days", "2",
            "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-addext", "subjectKeyIdentifier=hash",
        )  # fmt: skip
        return out

    def leaf(
        self,
        issuer: Issued,
        name: str,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        expired: bool = False,
    ) -> Issued:
        if HAVE_CRYPTOGRAPHY:
            return self._crypto_cert(name, issuer, dns, ips, ca=False, expired=expired)
        out = Issued(self.dir / f"{name}.pem", self.dir / f"{name}.key")
        csr = self.dir / f"{name}.csr"
        ext = self.dir / f"{name}.ext"
        sans = [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips]
        ext.write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
            "authorityKeyIdentifier=keyid\n"
            + (f"subjectAltName={','.join(sans)}\n" if sans else "")
        )
        self._openssl(
            "req", "-new", *self._newkey(out.key), "-out", str(csr), "-subj", f"/CN={name}"
        )
        self.serial += 1
        self._openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(issuer.cert), "-CAkey", str(issuer.key),
            "-set_serial", str(self.serial), "-extfile", str(ext), "-out", str(out.cert),
            # -days -1: notAfter a day before now, i.e. "certificate has expired".
            "-days", "-1" if expired else "1",
        )  # fmt: skip
        return out

    @staticmethod
    def _newkey(key: Path) -> list[str]:
        return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", str(key)]  # fmt: skip

    @staticmethod
    def _openssl(*args: str) -> None:
        assert OPENSSL is not None
        proc = subprocess.run([OPENSSL, *args], capture_output=True, timeout=30, check=False)
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")

    def _crypto_cert(
        self,
        name: str,
        issuer: Issued | None,
        dns: tuple[str, ...],
        ips: tuple[str, ...],
        *,
        ca: bool,
        expired: bool,
    ) -> Issued:
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        if issuer is None:
            issuer_name, signing_key = subject, key
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
        else:
            issuer_cert = x509.load_pem_x509_certificate(issuer.cert.read_bytes())
            loaded = serialization.load_pem_private_key(issuer.key.read_bytes(), None)
            assert isinstance(loaded, ec.EllipticCurvePrivateKey)
            issuer_name, signing_key = issuer_cert.subject, loaded
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(loaded.public_key())
        now = datetime.datetime.now(datetime.UTC)
        if expired:
            not_before, not_after = now - datetime.timedelta(days=10), now - datetime.timedelta(1)
        else:
            not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(2)
        self.serial += 1
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(self.serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(aki, critical=False)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )  # fmt: skip
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
            names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            if names:
                builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(signing_key, hashes.SHA256())
        out = Issued(self.dir / f"{name}.pem", self.dir / f"{name}.key")
        out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return out


# ---------------------------------------------------------------------------- TLS origin
@dataclass
class Handshake:
    conn_id: int
    sni: str | None
    ok: bool
    alpn: str | None = None
    version: str | None = None
    client_cn: str | None = None
    error: str = ""


_UNSET = "<no servername callback>"


class TlsOrigin(ThreadedTCPServer):
    """An HTTPS origin on 127.0.0.1 serving one certificate. Records every handshake (SNI,
    ALPN, version, client certificate) and every request; answers each GET with JSON
    ``{conn_id, sni, alpn, version, client_cn, path, host}`` on keep-alive connections."""

    thread_name = "tls-origin"

    def __init__(
        self,
        cert: Issued,
        client_ca: Issued | None = None,
        max_version: ssl.TLSVersion | None = None,
    ) -> None:
        super().__init__("127.0.0.1")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert.cert, cert.key)
        ctx.set_alpn_protocols(["http/1.1"])
        if client_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(client_ca.cert)
        if max_version is not None:
            ctx.maximum_version = max_version
        ctx.sni_callback = self._on_sni
        self.ctx = ctx
        self.handshakes: list[Handshake] = []
        self.requests: list[dict[str, Any]] = []
        self._local = threading.local()
        self._tls: set[ssl.SSLSocket] = set()

    def start(self) -> TlsOrigin:
        super().start()
        return self

    def stop(self) -> None:
        with self._lock:
            live = list(self._tls)
        for s in live:  # wake the connection threads blocked in the TLS socket
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        super().stop()

    def _on_sni(self, sslobj: Any, name: str | None, ctx: ssl.SSLContext) -> None:
        self._local.sni = name

    @property
    def ok_handshakes(self) -> list[Handshake]:
        with self._lock:
            return [h for h in self.handshakes if h.ok]

    @property
    def failed_handshakes(self) -> list[Handshake]:
        with self._lock:
            return [h for h in self.handshakes if not h.ok]

    def serve_connection(self, conn: socket.socket, conn_id: int) -> None:
        self._local.sni = _UNSET
        conn.settimeout(10)
        tls = self.ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        with self._lock:
            self._tls.add(tls)
        try:
            with tls:
                self._serve_tls(tls, conn_id)
        finally:
            with self._lock:
                self._tls.discard(tls)

    def _serve_tls(self, tls: ssl.SSLSocket, conn_id: int) -> None:
        try:
            tls.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            sni = self._local.sni
            with self._lock:
                self.handshakes.append(
                    Handshake(conn_id, None if sni == _UNSET else sni, False, error=str(exc))
                )
            return
        sni = self._local.sni
        peer = tls.getpeercert()
        client_cn = None
        if peer:
            for rdn in peer.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        client_cn = value
        shake = Handshake(
            conn_id,
            None if sni == _UNSET else sni,
            True,
            alpn=tls.selected_alpn_protocol(),
            version=tls.version(),
            client_cn=client_cn,
        )
        with self._lock:
            self.handshakes.append(shake)
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                data = tls.recv(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
            host = next((v for k, v in headers.items() if k.lower() == "host"), None)
            seen = {
                "conn_id": conn_id,
                "sni": shake.sni,
                "alpn": shake.alpn,
                "version": shake.version,
                "client_cn": shake.client_cn,
                "method": method,
                "path": target,
                "host": host,
            }
            with self._lock:
                self.requests.append(seen)
            body = json.dumps(seen).encode()
            tls.sendall(
                _head(
                    200, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
                )
                + body
            )


# ---------------------------------------------------------------------------- fixtures
@dataclass
class Certs:
    ca: Issued
    good: Issued  # tls.test, tls2.test
    wrong_san: Issued  # other.test
    expired: Issued  # tls.test, expired
    unknown_ca: Issued  # tls.test, from a CA the proxy does not trust
    ip: Issued  # IP 127.0.0.1
    alt: Issued  # alt.test only
    client: Issued  # client certificate
    extra: dict[str, Issued] = field(default_factory=dict)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    pki = Pki(tmp_path_factory.mktemp("pki"))
    ca = pki.ca("test-ca")
    rogue = pki.ca("rogue-ca")
    return Certs(
        ca=ca,
        good=pki.leaf(ca, "good", dns=("tls.test", "tls2.test")),
        wrong_san=pki.leaf(ca, "wrong-san", dns=("other.test",)),
        expired=pki.leaf(ca, "expired", dns=("tls.test",), expired=True),
        unknown_ca=pki.leaf(rogue, "unknown-ca", dns=("tls.test",)),
        ip=pki.leaf(ca, "ip", ips=("127.0.0.1",)),
        alt=pki.leaf(ca, "alt", dns=("alt.test",)),
        client=pki.leaf(ca, "dfproxy-client", dns=("client.test",)),
    )


@contextlib.contextmanager
def running(*servers: TlsOrigin) -> Iterator[None]:
    started: list[TlsOrigin] = []
    try:
        for s in servers:
            s.start()
            started.append(s)
        yield
    finally:
        for s in started:
            s.stop()
    for s in started:
        assert not s.errors, s.errors


@dataclass
class Origins:
    good: TlsOrigin
    wrong_san: TlsOrigin
    expired: TlsOrigin
    unknown_ca: TlsOrigin
    ip: TlsOrigin


@pytest.fixture(scope="module")
def origins(certs: Certs) -> Iterator[Origins]:
    o = Origins(
        good=TlsOrigin(certs.good),
        wrong_san=TlsOrigin(certs.wrong_san),
        expired=TlsOrigin(certs.expired),
        unknown_ca=TlsOrigin(certs.unknown_ca),
        ip=TlsOrigin(certs.ip),
    )
    with running(o.good, o.wrong_san, o.expired, o.unknown_ca, o.ip):
        yield o


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def tls_proxy(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, certs: Certs
) -> Iterator[ProxyProcess]:
    """A proxy whose DFP cluster originates TLS, trusting only the test CA."""
    path = tmp_path_factory.mktemp("tls") / "tls.yaml"
    write_config(path, gateway({"sslConfig": {"sslFiles": {"rootCa": str(certs.ca.cert)}}}))
    with (
        module_dns_server() as dns,
        module_proxy(tmp_path_factory, dns, request.param, "-c", str(path)) as p,
    ):
        yield p


@pytest.fixture
def proxy(tls_proxy: ProxyProcess, origins: Origins) -> Iterator[ProxyProcess]:
    yield tls_proxy
    check_alive(tls_proxy)
    assert_clean(tls_proxy)


def assert_tls_failure(p: ProxyProcess, url: str, tag: str, check_log: bool = False) -> None:
    r = get(p, f"{url}?t={tag}")
    assert r.status == 503, r.text
    # Envoy appends ", transport failure reason: <TLS error>" to the connect-failure text.
    assert r.text.startswith(CONNECT_FAILURE_BODY), r.text
    if check_log:  # waits for the access log's 1 s flush: once per test at most
        assert log_entry(p, rf"t={tag}")["flags"] == "UF"


# ---------------------------------------------------------------------------- tests
def test_good_certificate_200_with_sni(proxy: ProxyProcess, origins: Origins) -> None:
    r = proxy.curl(f"http://tls.test:{origins.good.port}/hello")
    assert r.returncode == 0 and r.http_code == 200, (r.stderr, r.text)
    seen = r.json()
    assert seen["sni"] == "tls.test"
    assert seen["host"] == f"tls.test:{origins.good.port}"
    assert seen["path"] == "/hello"
    assert seen["alpn"] == "http/1.1"
    # The TLS connection is pooled and reused for the next request to the same host.
    again = proxy.curl(f"http://tls.test:{origins.good.port}/again").json()
    assert again["conn_id"] == seen["conn_id"]


def test_each_name_gets_its_own_sni_and_san_check(proxy: ProxyProcess, origins: Origins) -> None:
    """Pools are per SNI/SAN: a connection opened for tls.test never serves another name,
    even one on the same address and port."""
    port = origins.good.port
    first = get(proxy, f"http://tls.test:{port}/a").json()
    second = get(proxy, f"http://tls2.test:{port}/b").json()
    assert (first["sni"], second["sni"]) == ("tls.test", "tls2.test")
    assert second["conn_id"] != first["conn_id"]
    before = cluster_stat(proxy, "ssl.fail_verify_san")
    assert_tls_failure(proxy, f"http://alias.test:{port}/c", "alias")  # not in the certificate
    assert cluster_stat(proxy, "ssl.fail_verify_san") == before + 1
    assert not [q for q in origins.good.requests if q["path"].startswith("/c")]


def test_wrong_san_is_503_and_the_connection_is_never_used(
    proxy: ProxyProcess, origins: Origins
) -> None:
    origin = origins.wrong_san
    before = cluster_stat(proxy, "ssl.fail_verify_san")
    accepted = origin.connections_accepted
    assert_tls_failure(proxy, f"http://tls.test:{origin.port}/", "wrongsan1")
    assert cluster_stat(proxy, "ssl.fail_verify_san") == before + 1
    # The second request fails the same way, on a new handshake.
    assert_tls_failure(proxy, f"http://tls.test:{origin.port}/", "wrongsan2", check_log=True)
    assert cluster_stat(proxy, "ssl.fail_verify_san") == before + 2
    assert origin.connections_accepted == accepted + 2
    assert origin.requests == []  # no HTTP byte ever went over those connections
    assert {h.sni for h in origin.handshakes} == {"tls.test"}


@pytest.mark.parametrize("which", ["expired", "unknown_ca"])
def test_unverifiable_certificate_is_503_fail_verify_error(
    proxy: ProxyProcess, origins: Origins, which: str
) -> None:
    origin: TlsOrigin = getattr(origins, which)
    before = cluster_stat(proxy, "ssl.fail_verify_error")
    san_before = cluster_stat(proxy, "ssl.fail_verify_san")
    assert_tls_failure(proxy, f"http://tls.test:{origin.port}/", f"{which}1")
    assert_tls_failure(proxy, f"http://tls.test:{origin.port}/", f"{which}2")
    assert cluster_stat(proxy, "ssl.fail_verify_error") == before + 2
    assert cluster_stat(proxy, "ssl.fail_verify_san") == san_before
    assert origin.requests == []


def test_ip_literal_200_without_sni(proxy: ProxyProcess, origins: Origins) -> None:
    r = proxy.curl(f"http://127.0.0.1:{origins.ip.port}/ip")
    assert r.returncode == 0 and r.http_code == 200, (r.stderr, r.text)
    seen = r.json()
    assert seen["sni"] is None, seen
    assert seen["host"] == f"127.0.0.1:{origins.ip.port}"


def test_absolute_form_https_target_is_originated_too(
    proxy: ProxyProcess, origins: Origins
) -> None:
    """A plain-HTTP request to the proxy naming an ``https://`` URL (absolute form): the
    proxy originates TLS the same way (here with an IP literal: no SNI)."""
    r = get(proxy, f"https://127.0.0.1:{origins.ip.port}/abs")
    assert r.status == 200, r.text
    assert r.json()["sni"] is None
    r = get(proxy, f"https://tls.test:{origins.good.port}/abs")
    assert r.status == 200, r.text
    assert r.json()["sni"] == "tls.test"


def test_connect_tunnels_carry_the_clients_own_tls(
    proxy: ProxyProcess, origins: Origins, certs: Certs
) -> None:
    """CONNECT is a raw tunnel even on a TLS cluster: the client does the handshake."""
    origin = origins.good
    before = len(origin.ok_handshakes)
    with RawClient("127.0.0.1", proxy.port) as c:
        assert c.request("CONNECT", f"tls2.test:{origin.port}").status == 200
        ctx = ssl.create_default_context(cafile=str(certs.ca.cert))
        with ctx.wrap_socket(c.sock, server_hostname="tls2.test") as s:
            s.sendall(b"GET /tunnelled HTTP/1.1\r\nHost: tls2.test\r\n\r\n")
            data = b""
            while b"}" not in data:
                chunk = s.recv(65536)
                assert chunk, f"EOF after {data!r}"
                data += chunk
    assert data.startswith(b"HTTP/1.1 200 ")
    seen = json.loads(data.partition(b"\r\n\r\n")[2])
    assert seen["sni"] == "tls2.test" and seen["path"] == "/tunnelled"
    assert len(origin.ok_handshakes) == before + 1  # one handshake: the client's, end to end


def test_ip_literal_against_a_dns_only_certificate_fails(
    proxy: ProxyProcess, origins: Origins
) -> None:
    before = cluster_stat(proxy, "ssl.fail_verify_san")
    assert_tls_failure(proxy, f"http://127.0.0.1:{origins.good.port}/ipbad", "ipbad")
    assert cluster_stat(proxy, "ssl.fail_verify_san") == before + 1
    assert not [q for q in origins.good.requests if q["path"].startswith("/ipbad")]


# ---------------------------------------------------------------------------- options
def test_sni_override_extra_san_client_certificate_and_minimum_version(
    proxy_factory: ProxyFactory, tmp_path: Path, certs: Certs
) -> None:
    ssl_config = {
        "sslFiles": {
            "rootCa": str(certs.ca.cert),
            "tlsCert": str(certs.client.cert),
            "tlsKey": str(certs.client.key),
        },
        "sni": "override.test",
        "verifySubjectAltName": ["alt.test"],
        "alpnProtocols": ["http/1.1"],
        "allowRenegotiation": False,
        "parameters": {"minimumProtocolVersion": "TLSv1_3"},
    }
    mtls = TlsOrigin(certs.alt, client_ca=certs.ca)
    old_tls = TlsOrigin(certs.alt, client_ca=certs.ca, max_version=ssl.TLSVersion.TLSv1_2)
    with running(mtls, old_tls):
        p = start_proxy(proxy_factory, tmp_path, gateway({"sslConfig": ssl_config}))
        r = get(p, f"http://tls.test:{mtls.port}/mtls")
        assert r.status == 200, r.text
        seen = r.json()
        assert seen["sni"] == "override.test"
        assert seen["client_cn"] == "dfproxy-client"
        assert seen["alpn"] == "http/1.1"
        assert seen["version"] == "TLSv1.3"
        assert seen["host"] == f"tls.test:{mtls.port}"  # the Host header is unchanged

        # An origin that cannot do TLS 1.3 fails the handshake.
        r = get(p, f"http://tls.test:{old_tls.port}/old")
        assert r.status == 503, r.text
        assert r.text.startswith(CONNECT_FAILURE_BODY)
        assert old_tls.requests == []
        assert_clean(p)


def _ssl_config_file(tmp_path: Path, ssl_config: dict[str, Any]) -> Path:
    return write_config(tmp_path / "gw.yaml", gateway({"sslConfig": ssl_config}))


def test_allow_renegotiation_true_is_a_config_error(tmp_path: Path, certs: Certs) -> None:
    files = {"rootCa": str(certs.ca.cert)}
    good = _ssl_config_file(tmp_path, {"sslFiles": files, "allowRenegotiation": False})
    load_paths([str(good)])  # accepted
    bad = _ssl_config_file(tmp_path, {"sslFiles": files, "allowRenegotiation": True})
    with pytest.raises(ConfigError) as info:
        load_paths([str(bad)])
    text = "\n".join(info.value.errors)
    assert "allowRenegotiation" in text or "renegotiation" in text.lower(), text
    assert "not supported yet" not in text  # refused for itself, not because TLS is missing
