"""PROXY protocol v1 and v2 (HAProxy's spec, "The PROXY protocol", 2020 edition): the header a
load balancer in front of us sends first, naming the real client address.

Pure: ``parse(buffer)`` looks at the bytes received so far and says whether a header is
complete, how long it is and what source address it carries.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # spec §2.1: the longest v1 line, CRLF included
V2_MAX = 16 + 536  # header + the largest address block we accept (TLVs included)


class ProxyProtocolError(ValueError):
    """Not a valid PROXY protocol header (the connection is closed)."""


class ProxyHeader(NamedTuple):
    length: int  # bytes the header occupies; what follows is the client's data
    source: tuple[str, int] | None  # None: LOCAL / UNKNOWN (keep the socket's peer)


def parse(buf: bytes) -> ProxyHeader | None:
    """The header at the start of ``buf``, or None if more bytes are needed."""
    if buf.startswith(V2_SIGNATURE[: len(buf)]) and len(buf) < 16:
        return None
    if buf.startswith(V2_SIGNATURE):
        return _parse_v2(buf)
    if V1_PREFIX.startswith(buf[:6]) and len(buf) < 6:
        return None
    if buf.startswith(V1_PREFIX):
        return _parse_v1(buf)
    raise ProxyProtocolError("missing PROXY protocol header")


def _parse_v1(buf: bytes) -> ProxyHeader | None:
    end = buf.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buf) >= V1_MAX:
            raise ProxyProtocolError("PROXY v1 line too long")
        return None
    parts = buf[:end].decode("ascii", "replace").split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(end + 2, None)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError("malformed PROXY v1 line")
    _, family, src, _dst, sport, _dport = parts
    try:
        address = ipaddress.ip_address(src)
        port = int(sport)
    except ValueError:
        raise ProxyProtocolError("malformed PROXY v1 address") from None
    if (address.version == 4) != (family == "TCP4") or not 0 <= port <= 65535:
        raise ProxyProtocolError("malformed PROXY v1 address")
    return ProxyHeader(end + 2, (str(address), port))


def _parse_v2(buf: bytes) -> ProxyHeader | None:
    ver_cmd, fam, length = struct.unpack_from("!BBH", buf, 12)
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError("unsupported PROXY protocol version")
    total = 16 + length
    if total > V2_MAX:
        raise ProxyProtocolError("PROXY v2 header too long")
    if len(buf) < total:
        return None
    command = ver_cmd & 0x0F
    if command == 0:  # LOCAL: the balancer's own connection (health check)
        return ProxyHeader(total, None)
    if command != 1:
        raise ProxyProtocolError("unknown PROXY v2 command")
    family = fam >> 4
    if family == 1 and length >= 12:  # AF_INET: src(4) dst(4) sport dport
        src = str(ipaddress.IPv4Address(buf[16:20]))
        (sport,) = struct.unpack_from("!H", buf, 24)
        return ProxyHeader(total, (src, sport))
    if family == 2 and length >= 36:  # AF_INET6: src(16) dst(16) sport dport
        src = str(ipaddress.IPv6Address(buf[16:32]))
        (sport,) = struct.unpack_from("!H", buf, 48)
        return ProxyHeader(total, (src, sport))
    return ProxyHeader(total, None)  # AF_UNSPEC / AF_UNIX: keep the socket's peer
