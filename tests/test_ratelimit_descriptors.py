"""Descriptors built from request data by each action kind, and the ratelimit service's rule
tree (envoyproxy/ratelimit GetLimit) — pure logic over a stand-in stream."""

from __future__ import annotations

from typing import Any

import pytest

from dfproxy.config.schema.ratelimit import Action, Descriptor
from dfproxy.ratelimit import descriptors as D


class FakeConn:
    def __init__(self, peer: str) -> None:
        self.peer = peer


class FakeStream:
    """The Stream attributes the actions read."""

    def __init__(
        self,
        headers: dict[str, str] | None = None,
        peer: str = "10.1.2.3:5555",
        host: str = "api.example.com",
        path: str = "/v1/items?x=1",
        jwt: Any = None,
    ) -> None:
        self.headers = {k.lower().encode(): v.encode() for k, v in (headers or {}).items()}
        self.conn = FakeConn(peer)
        self.host = host
        self.path = path
        self.filter_state: dict[str, object] | None = {"jwt_payload": jwt} if jwt else None
        self.route = None

    def request_header(self, lname: bytes) -> bytes | None:
        return self.headers.get(lname)

    request_header_joined = request_header

    def route_host(self) -> str:
        return self.host.lower()

    def path_only(self) -> str:
        return self.path.partition("?")[0]


def build(actions: list[dict[str, Any]], stream: FakeStream) -> tuple[D.Entry, ...] | None:
    return D.compile_actions([Action.model_validate(a) for a in actions]).build(stream)  # type: ignore[arg-type]


def test_remote_address_ipv4_and_ipv6() -> None:
    assert build([{"remoteAddress": {}}], FakeStream()) == (("remote_address", "10.1.2.3"),)
    v6 = FakeStream(peer="[2001:db8::1]:443")
    assert build([{"remoteAddress": {}}], v6) == (("remote_address", "2001:db8::1"),)


def test_request_header_present_absent_and_skipped() -> None:
    a = [{"requestHeaders": {"headerName": "X-User", "descriptorKey": "user"}}]
    assert build(a, FakeStream({"x-user": "alice"})) == (("user", "alice"),)
    assert build(a, FakeStream()) is None  # Envoy: the descriptor is not produced
    skip = [
        {"requestHeaders": {"headerName": "x-user", "descriptorKey": "user", "skipIfAbsent": True}},
        {"genericKey": {"descriptorValue": "g"}},
    ]
    assert build(skip, FakeStream()) == (("generic_key", "g"),)


def test_destination_host_without_port_and_path_without_query() -> None:
    s = FakeStream(host="API.Example.com:8443")
    assert build([{"destinationHost": {}}], s) == (("destination_host", "api.example.com"),)
    v6 = FakeStream(host="[::1]:80")
    assert build([{"destinationHost": {"descriptorKey": "h"}}], v6) == (("h", "::1"),)
    assert build([{"path": {}}], FakeStream()) == (("path", "/v1/items"),)


def test_jwt_claim_nested_typed_and_absent() -> None:
    jwt = {"sub": "u1", "org": {"id": 42, "paid": True}, "groups": ["a", "b"]}
    claim = [{"jwtClaim": {"claim": "org.id", "descriptorKey": "org"}}]
    assert build(claim, FakeStream(jwt=jwt)) == (("org", "42"),)
    paid = [{"jwtClaim": {"claim": "org.paid", "descriptorKey": "paid"}}]
    assert build(paid, FakeStream(jwt=jwt)) == (("paid", "true"),)
    groups = [{"jwtClaim": {"claim": "groups", "descriptorKey": "g"}}]
    assert build(groups, FakeStream(jwt=jwt)) == (("g", '["a","b"]'),)
    assert build(claim, FakeStream()) is None  # no JWT filter ran
    missing = [{"jwtClaim": {"claim": "nope", "descriptorKey": "k", "skipIfAbsent": True}}]
    assert build(missing, FakeStream(jwt=jwt)) is None  # nothing left: no descriptor


@pytest.mark.parametrize(
    ("matcher", "headers", "produced"),
    [
        ({"name": "x-env", "exactMatch": "prod"}, {"x-env": "prod"}, True),
        ({"name": "x-env", "exactMatch": "prod"}, {"x-env": "dev"}, False),
        ({"name": "x-env", "regexMatch": "pr[o]d"}, {"x-env": "prod"}, True),
        ({"name": "x-env", "regexMatch": "pr"}, {"x-env": "prod"}, False),  # a full match
        ({"name": "x-env", "prefixMatch": "pr"}, {"x-env": "prod"}, True),
        ({"name": "x-env", "suffixMatch": "od"}, {"x-env": "prod"}, True),
        ({"name": "x-env", "presentMatch": True}, {}, False),
        ({"name": "x-env", "exactMatch": "prod", "invertMatch": True}, {"x-env": "dev"}, True),
    ],
)
def test_header_value_match(
    matcher: dict[str, Any], headers: dict[str, str], produced: bool
) -> None:
    a = [{"headerValueMatch": {"descriptorValue": "hit", "headers": [matcher]}}]
    got = build(a, FakeStream(headers))
    assert got == ((("header_match", "hit"),) if produced else None)
    inverse = [
        {"headerValueMatch": {"descriptorValue": "hit", "expectMatch": False, "headers": [matcher]}}
    ]
    assert (build(inverse, FakeStream(headers)) is not None) == (not produced)


def tree() -> dict[str, D.Node]:
    descs = [
        {
            "key": "account",
            "descriptors": [
                {
                    "key": "plan",
                    "value": "BASIC",
                    "rateLimit": {"unit": "MINUTE", "requestsPerUnit": 1},
                },
                {"key": "plan", "rateLimit": {"unit": "HOUR", "requestsPerUnit": 100}},
            ],
        },
        {"key": "generic_key", "value": "g", "rateLimit": {"unit": "SECOND", "requestsPerUnit": 5}},
    ]
    return D.compile_tree([Descriptor.model_validate(d) for d in descs])


def test_tree_value_rule_first_then_any_value() -> None:
    t = tree()
    basic = D.find_limit(t, [("account", "a1"), ("plan", "BASIC")])
    assert basic is not None and (basic.name, basic.requests, basic.unit_seconds) == (
        "account.plan_BASIC",
        1,
        60,
    )
    other = D.find_limit(t, [("account", "a1"), ("plan", "GOLD")])
    assert other is not None and other.name == "account.plan" and other.unit_seconds == 3600
    g = D.find_limit(t, [("generic_key", "g")])
    assert g is not None and g.requests == 5


def test_tree_partial_or_unknown_descriptor_has_no_limit() -> None:
    t = tree()
    assert D.find_limit(t, [("account", "a1")]) is None  # the node has no limit itself
    assert D.find_limit(t, [("generic_key", "other")]) is None
    assert D.find_limit(t, [("generic_key", "g"), ("extra", "x")]) is None  # leaves the tree


def test_cache_key_cuts_long_values() -> None:
    key = D.cache_key([("k", "v" * 1000), ("p", "x")])
    assert key == f"k_{'v' * D.MAX_VALUE}:p_x"
