"""Authority (host[:port]) parsing and the DNS cache key, as Envoy's parseAuthority does it.

Pure: no I/O. The DNS cache key is ``host:port`` with IPv6 literals kept in brackets
(Envoy ``normalizeHostForDfp``); resolution and SNI use the host without brackets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator


class Authority:
    """A parsed authority. ``host`` has no brackets; ``is_ip`` says whether DNS is skipped;
    ``key`` is the cache and pool key: ``host:port``, IPv6 in brackets.

    Immutable by convention, compared and hashed as (host, port, is_ip). A class with slots,
    not a NamedTuple: the key is formatted once (parse_authority_cached hands out the same
    object), and CPython 3.11 specialises slot reads but not NamedTuple field or property
    reads (key + dict lookup: 3,700 -> 900 instructions, callgrind).
    """

    __slots__ = ("host", "port", "is_ip", "key")

    def __init__(self, host: str, port: int, is_ip: bool) -> None:
        self.host = host
        self.port = port
        self.is_ip = is_ip
        self.key = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Authority):
            return NotImplemented
        return (self.host, self.port, self.is_ip) == (other.host, other.port, other.is_ip)

    def __hash__(self) -> int:
        return hash((self.host, self.port, self.is_ip))

    def __iter__(self) -> Iterator[str | int | bool]:
        return iter((self.host, self.port, self.is_ip))

    def __repr__(self) -> str:
        return f"Authority(host={self.host!r}, port={self.port!r}, is_ip={self.is_ip!r})"


class AuthorityError(ValueError):
    """The authority cannot name a destination."""


def _is_port(text: str) -> bool:
    # ASCII digits only: str.isdigit() also accepts "²" and Arabic-Indic digits.
    return text.isascii() and text.isdigit() and len(text) <= 5


def split_host_port(authority: str) -> tuple[str, int | None]:
    """Split ``authority`` into host (brackets stripped) and port (None when absent).

    A port exists only when the last ``:`` comes after any ``]`` (Envoy
    ``HeaderUtility::getPortStart``). Raises AuthorityError for an empty host, a bad port
    or an unterminated IPv6 literal.
    """
    if not authority:
        raise AuthorityError("empty host")
    if authority[0] == "[":
        end = authority.find("]")
        if end < 0:
            raise AuthorityError("unterminated IPv6 literal")
        host = authority[1:end]
        rest = authority[end + 1 :]
        if not rest:
            port: int | None = None
        elif rest[0] == ":" and _is_port(rest[1:]):
            port = int(rest[1:])
        else:
            raise AuthorityError(f"bad port in {authority!r}")
    else:
        colon = authority.rfind(":")
        if colon < 0:
            host, port = authority, None
        else:
            host, digits = authority[:colon], authority[colon + 1 :]
            if ":" in host:
                # A bare IPv6 address without brackets is not a valid authority.
                raise AuthorityError(f"IPv6 literal must be in brackets: {authority!r}")
            if not _is_port(digits):
                raise AuthorityError(f"bad port in {authority!r}")
            port = int(digits)
    if not host:
        raise AuthorityError("empty host")
    if port is not None and not 0 < port <= 65535:
        raise AuthorityError(f"port out of range in {authority!r}")
    return host, port


def is_ip_literal(host: str) -> bool:
    """True for a textual IPv4 or IPv6 address (no DNS lookup needed)."""
    first = host[0]
    if not (first.isdigit() or ":" in host):
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# RFC 3986 §3.2.2: a reg-name is unreserved / pct-encoded / sub-delims; an IP-literal adds
# ":" (and "%" for an RFC 6874 zone). Anything else is refused, as Envoy's codec does
# (nghttp2_check_authority): c-ares reads "\\" as an escape ("bl\\ocked" is "blocked") and
# pycares IDNA-maps non-ASCII text (U+00AD vanishes, U+00BA is "o"), so such a host would be
# resolved as another name than the one access rules and the cache key saw.
_HOST_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=%:"
)


def parse_authority(authority: str, default_port: int) -> Authority:
    """Parse ``authority`` into an Authority, filling in ``default_port`` when absent.
    Raises AuthorityError, also for a host character RFC 3986 does not allow."""
    host, port = split_host_port(authority)
    if not _HOST_CHARS.issuperset(host):
        bad = next(ch for ch in host if ch not in _HOST_CHARS)
        raise AuthorityError(f"character {ord(bad):#04x} is not allowed in a host")
    return Authority(host.lower(), default_port if port is None else port, is_ip_literal(host))


# Parsed authorities by (raw bytes, default port). Parsing an IP literal costs ~4.6 µs (the
# ipaddress module); a dict hit ~0.1 µs. Bounded: cleared when full, so a client sending
# endless distinct hosts costs at most MAX_CACHED entries (~200 B each). Sized above the
# 10,000-name benchmark: at 4,096 that scenario cleared the cache every 4,096 names.
MAX_CACHED = 16384
_cache: dict[tuple[bytes, int], Authority] = {}


def parse_authority_cached(raw: bytes, default_port: int) -> Authority:
    """parse_authority for a raw header or target, memoised. Raises AuthorityError."""
    key = (raw, default_port)
    hit = _cache.get(key)
    if hit is not None:
        return hit
    value = parse_authority(raw.decode("latin-1"), default_port)
    if len(_cache) >= MAX_CACHED:
        _cache.clear()
    _cache[key] = value
    return value


# Characters of a host that inet_aton(3) may read as an IPv4 address: decimal, octal (a
# leading 0), hex (0x) parts, 1 to 4 of them.
_INET_ATON_CHARS = frozenset("0123456789abcdefx.")


def numeric_ipv4(host: str) -> str | None:
    """The dotted quad a numeric host spelling means, or None.

    ``2130706433``, ``0177.0.0.1``, ``0x7f.1`` and ``127.1`` are all 127.0.0.1 to inet_aton(3)
    (and so to getaddrinfo and most resolvers and browsers: the WHATWG URL IPv4 parser reads
    them the same way). A proxy that checks the destination as text would see a name; one
    that sends it to DNS may connect to the address it spells. One trailing dot is accepted
    (``127.0.0.1.``), as WHATWG does. ``host`` is lower-case (parse_authority). Pure.
    """
    if not host or not host[0].isdigit() or not _INET_ATON_CHARS.issuperset(host):
        return None
    parts = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if len(parts) > 4:
        return None
    values: list[int] = []
    for part in parts:
        if not part:
            return None
        try:
            if part[:2] == "0x":
                value = int(part[2:], 16) if len(part) > 2 else 0
            elif len(part) > 1 and part[0] == "0":
                value = int(part[1:], 8)
            else:
                value = int(part, 10)
        except ValueError:
            return None
        values.append(value)
    # Every part but the last is one byte; the last fills the remaining bytes.
    last_bits = 8 * (5 - len(values))
    if any(v > 255 for v in values[:-1]) or values[-1] >= 1 << last_bits:
        return None
    number = values[-1]
    for i, v in enumerate(values[:-1]):
        number |= v << (24 - 8 * i)
    return f"{number >> 24}.{(number >> 16) & 255}.{(number >> 8) & 255}.{number & 255}"
