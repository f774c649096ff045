"""TLS origination for the dynamic forward proxy cluster (Gloo ``sslConfig``).

Envoy's DFP cluster forces ``auto_sni`` and ``auto_san_validation`` (reference §2.1, §7): the
SNI is the request's host without the port (never for an IP literal) and the certificate
must name that host. ``sni`` fixes the SNI instead; ``verifySubjectAltName`` adds names the
certificate may carry instead of the host. A certificate that fails is never used: the
connection is closed during the handshake and the request gets a 503.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass, field

VERSIONS = {
    "TLS_AUTO": None,
    "TLSv1_0": ssl.TLSVersion.TLSv1,
    "TLSv1_1": ssl.TLSVersion.TLSv1_1,
    "TLSv1_2": ssl.TLSVersion.TLSv1_2,
    "TLSv1_3": ssl.TLSVersion.TLSv1_3,
}
X509_V_ERR_HOSTNAME_MISMATCH = 62
X509_V_ERR_IP_ADDRESS_MISMATCH = 64


@dataclass(frozen=True)
class TlsSettings:
    """What the cluster's TLS needs; file paths are read when the context is built."""

    root_ca: str | None = None  # None: the system's CA bundle
    cert: str | None = None  # client certificate (mutual TLS)
    key: str | None = None
    sni: str | None = None
    verify_san: tuple[str, ...] = field(default_factory=tuple)
    alpn: tuple[str, ...] = ("http/1.1",)
    min_version: str | None = "TLSv1_2"  # Envoy's client default
    max_version: str | None = None


class SanMismatch(ssl.SSLError):
    """The certificate is valid but names neither the host nor an allowed name."""


MAX_SESSIONS = 4096


class SessionContext(ssl.SSLContext):
    """An SSLContext that resumes TLS sessions per server name.

    asyncio and uvloop create connections with ``wrap_bio(...)`` and take no session
    argument; this hook supplies the last session seen for the name, so a new upstream
    connection to an origin resumes instead of doing a full handshake.
    """

    sessions: dict[str, ssl.SSLSession]

    def wrap_bio(  # type: ignore[override]
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        if session is None and server_hostname is not None:
            session = self.sessions.get(server_hostname)
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)

    def remember(self, name: str, ssl_object: ssl.SSLObject | None) -> None:
        """Keep ``ssl_object``'s session for the next connection to ``name`` (TLS 1.3 sends
        tickets after the handshake, so this is called again when a connection is idle)."""
        session = ssl_object.session if ssl_object is not None else None
        if session is None:
            return
        if len(self.sessions) >= MAX_SESSIONS and name not in self.sessions:
            self.sessions.clear()
        self.sessions[name] = session


def build_context(settings: TlsSettings) -> SessionContext:
    """The client context for every upstream TLS connection of the cluster."""
    ctx = SessionContext(ssl.PROTOCOL_TLS_CLIENT)  # verify_mode REQUIRED, check_hostname on
    ctx.sessions = {}
    if settings.root_ca:
        ctx.load_verify_locations(cafile=settings.root_ca)
    else:
        ctx.load_default_certs()
    if settings.cert:
        ctx.load_cert_chain(settings.cert, settings.key)
    minimum = VERSIONS.get(settings.min_version or "TLS_AUTO")
    if minimum is not None:
        ctx.minimum_version = minimum
    maximum = VERSIONS.get(settings.max_version or "TLS_AUTO")
    if maximum is not None:
        ctx.maximum_version = maximum
    ctx.set_alpn_protocols(list(settings.alpn) or ["http/1.1"])
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)  # allowRenegotiation: false
    if settings.sni or settings.verify_san:
        # The name checked is not the SNI (or more names are allowed): check_san() does it.
        ctx.check_hostname = False
    return ctx


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def server_hostname(settings: TlsSettings, host: str) -> str | None:
    """What to pass as server_hostname: the SNI (Python sends none for an IP address)."""
    return settings.sni or host


def _dns_match(pattern: str, name: str) -> bool:
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        # RFC 6125 §6.4.3: the wildcard covers exactly one leftmost label.
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


def check_san(cert: dict[str, object] | None, host: str, extra: tuple[str, ...]) -> None:
    """Raise SanMismatch unless the peer certificate names ``host`` or one of ``extra``."""
    sans = cert.get("subjectAltName", ()) if cert else ()
    wanted = (host, *extra)
    for kind, value in sans:  # type: ignore[attr-defined]
        for name in wanted:
            if kind == "DNS" and not is_ip(name) and _dns_match(value, name):
                return
            is_address = kind == "IP Address" and is_ip(name)
            if is_address and ipaddress.ip_address(value) == ipaddress.ip_address(name):
                return
    raise SanMismatch(f"certificate SAN does not match {', '.join(wanted)}")


def failure_kind(exc: BaseException) -> str:
    """The Envoy ssl stat a handshake failure counts under."""
    if isinstance(exc, SanMismatch):
        return "fail_verify_san"
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in (X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH):
            return "fail_verify_san"
        return "fail_verify_error"
    return "connection_error"


def failure_reason(exc: BaseException) -> str:
    """Envoy's "transport failure reason" wording for the 503 body."""
    reason = getattr(exc, "reason", None) or type(exc).__name__
    detail = getattr(exc, "verify_message", None) or str(exc)
    return f"TLS error: {reason}: {detail}"
