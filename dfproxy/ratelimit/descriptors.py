"""Envoy's rate limit descriptors: built from a request by actions, matched against rules.

Actions (Envoy ``config.route.v3.RateLimit.Action``) each append one ``(key, value)`` entry to
a descriptor. As in Envoy, when an action cannot produce its entry (a header absent without
``skipIfAbsent``, a header match that did not match) the whole descriptor is not produced and
its limit does not apply to the request.

Rules (the ratelimit service's descriptor tree, envoyproxy/ratelimit ``config_impl.go``
``GetLimit``): each entry walks one level down, looking first for ``key_value`` (a rule for that
value) and then for ``key`` (a rule for every value, counted per value); the limit is the one
on the node the last entry reaches. A descriptor that leaves the tree has no limit.

Everything here is compiled once at config load; per request it is a few attribute reads
and header lookups, no regex compilation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dfproxy.config.schema import ratelimit as rs

if TYPE_CHECKING:
    from dfproxy.stream import Stream

Entry = tuple[str, str]
# An entry, SKIP (the action contributes nothing but the descriptor goes on), or None (the
# descriptor is not produced).
SKIP: Entry = ("", "")
Extractor = Callable[["Stream"], Entry | None]

# Values longer than this are cut in Redis keys and stats (a header is client-controlled).
MAX_VALUE = 256


def client_ip(stream: Stream) -> str:
    """The client address without its port (PROXY protocol has already rewritten it)."""
    peer = stream.conn.peer
    host = peer.rpartition(":")[0] if peer else ""
    return host[1:-1] if host.startswith("[") else host


def destination_host(stream: Stream) -> str:
    """The request's destination host, lower case, without a port: the CONNECT target or the
    Host (the DFP filter, which resolves it, runs after the rate limit)."""
    host = stream.route_host()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


def claim_value(payload: object, path: Sequence[str]) -> str | None:
    """A JWT claim (``path`` split on dots) as descriptor text, or None when absent."""
    value = payload
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _header_matcher(m: rs.HeaderMatcher) -> Callable[[Stream], bool]:
    lname = m.name.lower().encode()
    invert = m.invert_match

    def test(ok: bool) -> bool:
        return ok != invert

    if m.exact_match is not None:
        exact = m.exact_match

        def exact_fn(s: Stream) -> bool:
            v = s.request_header_joined(lname)
            return v is not None and test(v.decode("latin-1") == exact)

        return exact_fn
    if m.regex_match is not None:
        rx = re.compile(m.regex_match)  # the caller reports re.error with its path

        def regex_fn(s: Stream) -> bool:
            v = s.request_header_joined(lname)
            return v is not None and test(rx.fullmatch(v.decode("latin-1")) is not None)

        return regex_fn
    if m.prefix_match is not None or m.suffix_match is not None:
        prefix, suffix = m.prefix_match or "", m.suffix_match or ""

        def affix_fn(s: Stream) -> bool:
            v = s.request_header_joined(lname)
            if v is None:
                return False
            text = v.decode("latin-1")
            return test(text.startswith(prefix) and text.endswith(suffix))

        return affix_fn
    present = m.present_match is not False

    def present_fn(s: Stream) -> bool:
        return test((s.request_header(lname) is not None) == present)

    return present_fn


def compile_action(a: rs.Action) -> Extractor:
    """One action as a function of the request. Raises re.error for a bad regexMatch."""
    if a.remote_address is not None:
        return lambda s: ("remote_address", client_ip(s))
    if a.request_headers is not None:
        lname = a.request_headers.header_name.lower().encode()
        key = a.request_headers.descriptor_key
        skip = a.request_headers.skip_if_absent

        def header(s: Stream) -> Entry | None:
            v = s.request_header_joined(lname)
            if v is None:
                return SKIP if skip else None
            return (key, v.decode("latin-1"))

        return header
    if a.generic_key is not None:
        entry = (a.generic_key.descriptor_key, a.generic_key.descriptor_value)
        return lambda s: entry
    if a.header_value_match is not None:
        hv = a.header_value_match
        matchers = [_header_matcher(m) for m in hv.headers]
        expect = hv.expect_match
        value = hv.descriptor_value

        def header_match(s: Stream) -> Entry | None:
            matched = all(m(s) for m in matchers)
            return ("header_match", value) if matched == expect else None

        return header_match
    if a.destination_host is not None:
        key = a.destination_host.descriptor_key or "destination_host"
        return lambda s: (key, destination_host(s))
    if a.path is not None:
        key = a.path.descriptor_key or "path"
        return lambda s: (key, s.path_only())
    if a.jwt_claim is not None:
        parts = tuple(a.jwt_claim.claim.split("."))
        key = a.jwt_claim.descriptor_key
        skip = a.jwt_claim.skip_if_absent

        def jwt(s: Stream) -> Entry | None:
            state = s.filter_state
            value = claim_value(state.get("jwt_payload"), parts) if state else None
            if value is None:
                return SKIP if skip else None
            return (key, value)

        return jwt
    if a.source_cluster is not None:
        return lambda s: ("source_cluster", "dfproxy")
    assert a.destination_cluster is not None

    def cluster(s: Stream) -> Entry | None:
        c = getattr(getattr(s.route, "action", None), "cluster", None)
        return ("destination_cluster", c.name) if c is not None else None

    return cluster


@dataclass(frozen=True)
class DescriptorBuilder:
    """The actions of one rate limit: ``build(stream)`` is the descriptor or None."""

    extractors: tuple[Extractor, ...]

    def build(self, stream: Stream) -> tuple[Entry, ...] | None:
        out = []
        for ex in self.extractors:
            entry = ex(stream)
            if entry is None:
                return None
            if entry is not SKIP:
                out.append(entry)
        return tuple(out) if out else None


def compile_actions(actions: Sequence[rs.Action]) -> DescriptorBuilder:
    return DescriptorBuilder(tuple(compile_action(a) for a in actions))


# -- the rule tree ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    """A rule's limit: ``requests`` per ``unit_seconds``; ``name`` is its rule path."""

    name: str
    requests: int
    unit_seconds: int
    token_bucket: bool


@dataclass
class Node:
    limit: Limit | None = None
    children: dict[str, Node] = field(default_factory=dict)


def compile_tree(descriptors: Sequence[rs.Descriptor], prefix: str = "") -> dict[str, Node]:
    """The rule tree: keyed ``key_value`` for a rule with a value, ``key`` for any value."""
    tree: dict[str, Node] = {}
    for d in descriptors:
        name = f"{d.key}_{d.value}" if d.value else d.key
        path = f"{prefix}.{name}" if prefix else name
        limit = None
        if d.rate_limit is not None:
            r = d.rate_limit
            limit = Limit(
                path, r.requests_per_unit, rs.UNIT_SECONDS[r.unit], r.algorithm == "TOKEN_BUCKET"
            )
        tree[name] = Node(limit, compile_tree(d.descriptors, path))
    return tree


def find_limit(tree: dict[str, Node], descriptor: Sequence[Entry]) -> Limit | None:
    """The limit the whole descriptor reaches, or None (envoyproxy/ratelimit GetLimit)."""
    level = tree
    last = len(descriptor) - 1
    for i, (key, value) in enumerate(descriptor):
        node = level.get(f"{key}_{value}") or level.get(key)
        if node is None:
            return None
        if i == last:
            return node.limit
        level = node.children
    return None


def cache_key(descriptor: Sequence[Entry]) -> str:
    """The counter's name for one descriptor (values cut at MAX_VALUE)."""
    return ":".join(f"{k}_{v[:MAX_VALUE]}" for k, v in descriptor)
