"""Addresses as access rules see them: integers, with the IPv4 address an IPv6 one embeds.

Pure: no I/O. An IPv6 address can carry an IPv4 destination that the kernel, a NAT64
gateway or a 6to4 relay will reach; a rule on ``127.0.0.0/8`` must see it, so an address is
checked in every form it has (``forms``): the IPv6 address itself, and the IPv4 address of
- IPv4-mapped ``::ffff:a.b.c.d`` (RFC 4291 §2.5.5.2): a dual-stack socket connects to a.b.c.d,
  so this one is only that IPv4 address (an IPv6 rule such as ``::/0`` must not allow it);
- IPv4-compatible ``::a.b.c.d`` (RFC 4291 §2.5.5.1, deprecated; ``::`` and ``::1`` excluded);
- NAT64 well-known prefix ``64:ff9b::/96`` (RFC 6052 §2.1) and the local-use ``64:ff9b:1::/48``
  with the /96 layout (RFC 8215);
- 6to4 ``2002:AABB:CCDD::/48`` (RFC 3056 §2): the relay forwards to AA.BB.CC.DD.
Teredo (2001::/32) embeds an obfuscated client address, not a destination; it is not mapped.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

V4, V6 = 4, 6
_V4_MAPPED = 0xFFFF << 32
_NAT64_WKP = 0x0064FF9B << 96
_NAT64_LOCAL = 0x0064FF9B0001 << 80  # 64:ff9b:1::/48
_LOW32 = 0xFFFFFFFF

Form = tuple[int, int]  # (version, address as an integer)


def embedded_ipv4(value: int) -> int | None:
    """The IPv4 address an IPv6 address (as an integer) embeds, or None."""
    top96 = value >> 32
    if top96 == 0xFFFF:  # ::ffff:0:0/96
        return value & _LOW32
    if top96 == 0 and value > 1:  # ::a.b.c.d (not :: or ::1)
        return value & _LOW32
    if value >> 32 == _NAT64_WKP >> 32:
        return value & _LOW32
    if value >> 80 == _NAT64_LOCAL >> 80:
        return value & _LOW32
    if value >> 112 == 0x2002:
        return (value >> 80) & _LOW32
    return None


def forms(text: str) -> tuple[Form, ...]:
    """Every form of an address literal a rule compares: (4, n), or (6, n) and the embedded
    IPv4 (4, m) when there is one. Raises ValueError for text that is not an address."""
    if "%" in text:
        text = text[: text.index("%")]  # an IPv6 zone (fe80::1%eth0) names a link, not a host
    ip = ipaddress.ip_address(text)
    n = int(ip)
    if ip.version == V4:
        return ((V4, n),)
    if n >> 32 == _V4_MAPPED >> 32:
        return ((V4, n & _LOW32),)  # the IPv4 address itself, written as IPv6
    v4 = embedded_ipv4(n)
    return ((V6, n),) if v4 is None else ((V6, n), (V4, v4))


# Forms by address text. Parsing costs ~2 µs (ipaddress); a hit ~60 ns. Bounded like the
# authority cache: cleared when full.
MAX_CACHED = 16384
_cache: dict[str, tuple[Form, ...]] = {}


def forms_cached(text: str) -> tuple[Form, ...]:
    """``forms`` memoised (the addresses of resolved hosts repeat)."""
    hit = _cache.get(text)
    if hit is None:
        hit = forms(text)
        if len(_cache) >= MAX_CACHED:
            _cache.clear()
        _cache[text] = hit
    return hit


class CidrSet:
    """A set of CIDR ranges, matched against every form of an address."""

    __slots__ = ("v4", "v6", "texts")

    def __init__(self, cidrs: Iterable[str]) -> None:
        """Raises ValueError naming the bad range (host bits set, not an address)."""
        self.v4: list[tuple[int, int]] = []
        self.v6: list[tuple[int, int]] = []
        self.texts: list[str] = []
        for text in cidrs:
            net = ipaddress.ip_network(text.strip(), strict=True)
            n = int(net.network_address)
            if net.version == V6 and net.prefixlen >= 96 and n >> 32 == _V4_MAPPED >> 32:
                # ::ffff:a.b.c.d/n is the IPv4 range a.b.c.d/(n-96), as its addresses are.
                v4 = ipaddress.IPv4Address(n & _LOW32)
                net = ipaddress.ip_network(f"{v4}/{net.prefixlen - 96}")
            bits = 32 if net.version == V4 else 128
            mask = ((1 << net.prefixlen) - 1) << (bits - net.prefixlen)
            (self.v4 if net.version == V4 else self.v6).append((int(net.network_address), mask))
            self.texts.append(str(net))

    def matches(self, address_forms: tuple[Form, ...]) -> bool:
        """True when any form of the address lies in any range of the set."""
        for version, n in address_forms:
            for net, mask in self.v4 if version == V4 else self.v6:
                if n & mask == net:
                    return True
        return False


def peer_forms(peer: str) -> tuple[Form, ...]:
    """The forms of the client address in ``HttpConnection.peer`` (``ip:port``, ``[v6]:port``
    or ``v6:port``: everything before the last colon); () when it is not an address."""
    host = peer.rpartition(":")[0].strip("[]")
    if not host:
        return ()
    try:
        return forms_cached(host)
    except ValueError:
        return ()
