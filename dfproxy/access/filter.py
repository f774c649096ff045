"""The access filters: who may use a route (source rules, Gloo RBAC) and where it may go.

``SourceFilter`` runs with the request head, after proxy authentication and JWT (it reads
``proxy_user`` and ``jwt_payload`` from the stream's state). ``DestinationFilter`` checks the
name before DNS when the rules can already decide there (a denied name is never resolved),
and the resolved addresses in ``on_upstream_host``: it replaces ``stream.host`` with a
pinned copy holding only the allowed addresses, so Happy Eyeballs, the idle-connection
lookup and retries never touch another one, and a DNS refresh between the check and the
connect (rebinding) cannot swap an address in. A refusal is a 403 naming the rule, before
any connect.

Stats (Envoy RBAC filter names, under ``http.<listener>.rbac.``): ``allowed``, ``denied``,
``shadow_allowed``, ``shadow_denied``; per rule ``policy.<rule>.denied``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NamedTuple

from dfproxy.access.addresses import forms_cached, peer_forms
from dfproxy.access.rules import UNDECIDED, DestinationRule, DestinationRules, RbacPolicies
from dfproxy.access.rules import SourceRules as SourceRuleList
from dfproxy.dns.cache import DnsHostInfo
from dfproxy.filters import CONTINUE, STOP, HttpFilter
from dfproxy.http.authority import numeric_ipv4
from dfproxy.stats import Counter, StatsStore

if TYPE_CHECKING:
    from dfproxy.stream import Stream

log = logging.getLogger("dfproxy.access")

RBAC_DENIED = b"RBAC: access denied"  # Envoy's local reply text
# Pinned hosts kept per filter, by (host key, CONNECT): bounded like the DNS cache's hosts.
MAX_PINNED = 4096


class Checked(NamedTuple):
    """The outcome for one address list: the pinned host, or None and the refusal."""

    addresses: list[tuple[str, int]]  # the list checked (compared by identity)
    pinned: DnsHostInfo | None
    body: bytes
    rule: str


class AccessStats:
    """The counters of one listener's access filters (shared by its routes)."""

    __slots__ = ("stats", "prefix", "allowed", "denied", "shadow_allowed", "shadow_denied", "rules")

    def __init__(self, stats: StatsStore, prefix: str) -> None:
        self.stats = stats
        self.prefix = prefix
        self.allowed = stats.counter(prefix + "allowed")
        self.denied = stats.counter(prefix + "denied")
        self.shadow_allowed = stats.counter(prefix + "shadow_allowed")
        self.shadow_denied = stats.counter(prefix + "shadow_denied")
        self.rules: dict[str, Counter] = {}

    def rule_denied(self, rule: str) -> None:
        counter = self.rules.get(rule)
        if counter is None:
            counter = self.rules[rule] = self.stats.counter(f"{self.prefix}policy.{rule}.denied")
        counter.value += 1


def _deny(stream: Stream, stats: AccessStats, rule: str, body: bytes, shadow: bool) -> bool:
    """Refuse (or, in shadow mode, only count and log); True when the stream was answered."""
    log.info(
        "%s %s from %s -> 403 %s%s",
        stream.method.decode("latin-1"),
        stream.target.decode("latin-1"),
        stream.conn.peer,
        body.decode("latin-1"),
        " (shadow: allowed)" if shadow else "",
    )
    stats.rule_denied(rule)
    if shadow:
        stats.shadow_denied.value += 1
        return False
    stats.denied.value += 1
    stream.details = f"rbac_access_denied_matched_policy[{rule}]"
    stream.send_local_reply(403, body)
    return True


class SourceFilter(HttpFilter):
    """Source rules (client address, proxy user), then Gloo RBAC (JWT claims)."""

    name = "dfproxy.access.source"

    def __init__(
        self,
        source: SourceRuleList | None,
        rbac: RbacPolicies | None,
        stats: AccessStats,
        count_allowed: bool,
    ) -> None:
        self.source = source
        self.rbac = rbac
        self.stats = stats
        self.count_allowed = count_allowed  # False: the destination filter counts it

    def on_request_headers(self, stream: Stream) -> int:
        state = stream.filter_state
        source = self.source
        if source is not None:
            user = state.get("proxy_user") if state else None
            user = user if isinstance(user, str) else None
            peer = stream.conn.peer
            rule = source.decide(peer_forms(peer), user)
            if not rule.allow:
                who = peer.rpartition(":")[0] + (f", user {user}" if user else "")
                body = f"source denied by rule '{rule.name}' ({who})".encode()
                if _deny(stream, self.stats, rule.name, body, source.shadow):
                    return STOP
            elif source.shadow:
                self.stats.shadow_allowed.value += 1
        if self.rbac is not None:
            payload = state.get("jwt_payload") if state else None
            claims = payload if isinstance(payload, dict) else None
            if not self.rbac.allowed(claims, stream.path_only(), stream.method):
                _deny(stream, self.stats, "none", RBAC_DENIED, False)
                return STOP
        if self.count_allowed:
            self.stats.allowed.value += 1
        return CONTINUE


class DestinationFilter(HttpFilter):
    """Destination rules on the name (before DNS) and on each resolved address."""

    name = "dfproxy.access.destination"

    def __init__(self, rules: DestinationRules, stats: AccessStats, pre_dns: bool) -> None:
        self.rules = rules
        self.stats = stats
        # In shadow mode the check after DNS counts each request once.
        self.pre_dns = pre_dns and not rules.shadow
        # By (host key, CONNECT). The DNS cache replaces a host's address list when an
        # answer changes and never edits it, so an identical list object means "checked".
        self.checked: dict[tuple[str, bool], Checked] = {}

    def on_request_headers(self, stream: Stream) -> int:
        a = stream.authority
        if not self.pre_dns or a is None or a.is_ip or numeric_ipv4(a.host) is not None:
            return CONTINUE  # an address is checked after the DFP filter classified it
        rule = self.rules.decide_name(a.host, a.port, stream.is_connect)
        if rule is UNDECIDED or rule.allow:
            return CONTINUE
        body = f"destination denied by rule '{rule.name}' ({a.key})".encode()
        if _deny(stream, self.stats, rule.name, body, self.rules.shadow):
            return STOP
        return CONTINUE

    def on_upstream_host(self, stream: Stream) -> int:
        host = stream.host
        if host is None or not host.addresses:
            return CONTINUE  # nothing to connect to: the stream answers that itself
        key = (host.key, stream.is_connect)
        entry = self.checked.get(key)
        if entry is None or entry.addresses is not host.addresses:
            entry = self._check(host, stream.is_connect)
            if len(self.checked) >= MAX_PINNED:
                self.checked.clear()
            self.checked[key] = entry
        pinned = entry.pinned
        if pinned is None:
            if _deny(stream, self.stats, entry.rule, entry.body, self.rules.shadow):
                return STOP
        elif self.rules.shadow:
            self.stats.shadow_allowed.value += 1
        else:
            stream.host = pinned
        self.stats.allowed.value += 1
        return CONTINUE

    def _check(self, host: DnsHostInfo, connect: bool) -> Checked:
        """Filter ``host``'s addresses (Envoy resolved_address_filter): the pinned copy with
        the allowed ones, or None and the denial of the first address."""
        name, port = host.host, host.port
        kept = []
        denial: tuple[DestinationRule, str] | None = None
        for address in host.addresses:
            ip = address[0]
            rule = self.rules.decide(name, port, connect, forms_cached(ip))
            if rule.allow:
                kept.append(address)
            elif denial is None:
                denial = (rule, ip)
        if not kept:
            assert denial is not None
            rule, ip = denial
            where = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
            body = f"destination denied by rule '{rule.name}' ({where})".encode()
            return Checked(host.addresses, None, body, rule.name)
        if denial is not None:
            log.debug("%s: addresses %s denied by rule %r", host.key, denial[1], denial[0].name)
        pinned = DnsHostInfo(host.key, port)
        pinned.addresses = kept  # a list of its own: a refresh of ``host`` never reaches it
        pinned.resolved = True
        pinned.last_status = host.last_status
        pinned.ttl = host.ttl
        pinned.stats = host.stats  # requests through the copy count for the host
        return Checked(host.addresses, pinned, b"", "")
