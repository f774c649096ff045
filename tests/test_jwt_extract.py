"""dfproxy/jwt_authn/extract.py: token sources (header with prefix, query parameters, the
default order) and taking a verified token out of the request."""

from __future__ import annotations

from dfproxy.jwt_authn.extract import (
    DEFAULT_LOCATIONS,
    HeaderLocation,
    extract,
    query_location,
    remove,
)
from tests.fake_request import FakeRequest

TOKEN = "eyJh.eyJi.c2ln"


def values(req: FakeRequest, locations: tuple) -> list[bytes]:  # type: ignore[type-arg]
    return [t.value for t in extract(req, locations)]


def test_default_is_authorization_bearer_then_access_token() -> None:
    req = FakeRequest([("Authorization", f"Bearer {TOKEN}")], path="/p?access_token=q.r.s")
    assert values(req, DEFAULT_LOCATIONS) == [TOKEN.encode(), b"q.r.s"]
    assert values(FakeRequest([("Authorization", f"Basic {TOKEN}")]), DEFAULT_LOCATIONS) == []
    assert values(FakeRequest(path="/?access_token=a.b.c&x=1"), DEFAULT_LOCATIONS) == [b"a.b.c"]
    assert values(FakeRequest(path="/?my_access_token=a.b.c"), DEFAULT_LOCATIONS) == []


def test_header_prefix_and_token_characters() -> None:
    loc = (HeaderLocation(b"x-jwt", b"Token "),)
    # The token is the base64url/dot run after the prefix (Envoy extractJWT).
    assert values(FakeRequest([("X-JWT", f"Token {TOKEN}, more")]), loc) == [TOKEN.encode()]
    assert values(FakeRequest([("x-jwt", TOKEN)]), loc) == []  # prefix required
    bare = (HeaderLocation(b"x-jwt", b""),)
    assert values(FakeRequest([("x-jwt", TOKEN)]), bare) == [TOKEN.encode()]


def test_query_parameter_is_decoded() -> None:
    loc = (query_location("jwt"),)
    assert values(FakeRequest(path="/a?b=1&jwt=x%2Ey.z"), loc) == [b"x.y.z"]
    assert values(FakeRequest(path="/a?jwtx=1"), loc) == []


def test_remove_takes_the_header_or_the_parameter_out() -> None:
    req = FakeRequest([("authorization", f"Bearer {TOKEN}"), ("x-other", "1")], path="/p?a=1")
    (token,) = extract(req, DEFAULT_LOCATIONS)
    remove(req, token)
    assert req.headers("authorization") == [] and req.headers("x-other") == ["1"]
    req = FakeRequest(path="/p?a=1&access_token=a.b.c&z=2")
    (token,) = extract(req, DEFAULT_LOCATIONS)
    remove(req, token)
    assert req.path == b"/p?a=1&z=2"
    req = FakeRequest(path="/p?access_token=a.b.c")
    remove(req, extract(req, DEFAULT_LOCATIONS)[0])
    assert req.path == b"/p"
