"""dfproxy/jwt_authn/token.py: parsing with jwt_verify_lib's statuses, time checks with the
clock skew, audiences, claims as header values."""

from __future__ import annotations

import pytest

from dfproxy.jwt_authn import status as st
from dfproxy.jwt_authn.status import JwtError
from dfproxy.jwt_authn.token import (
    Jwt,
    audiences_allowed,
    claim,
    claim_header_value,
    normalize_audience,
)
from tests import jwt_support as s

RS = {"alg": "RS256", "typ": "JWT"}


def status_of(token: str) -> str:
    try:
        Jwt(token.encode())
    except JwtError as exc:
        return exc.status
    return st.OK


@pytest.mark.parametrize(
    ("token", "status"),
    [
        ("", st.BAD_FORMAT),
        ("abc", st.BAD_FORMAT),
        ("a.b", st.BAD_FORMAT),
        ("a.b.c.d", st.BAD_FORMAT),
        ("!!!.e30.c2ln", st.HEADER_BAD_BASE64),
        (s.b64(b"not json") + ".e30.c2ln", st.HEADER_BAD_JSON),
        (s.b64(b"[1]") + ".e30.c2ln", st.HEADER_BAD_JSON),
        (s.raw({"typ": "JWT"}, {}), st.HEADER_BAD_ALG),
        (s.raw({"alg": 5}, {}), st.HEADER_BAD_ALG),
        (s.raw({"alg": "none"}, {}), st.HEADER_ALG_NOT_IMPLEMENTED),
        (s.raw({"alg": "HS1"}, {}), st.HEADER_ALG_NOT_IMPLEMENTED),
        (s.raw({"alg": "RS256", "kid": 1}, {}), st.HEADER_BAD_KID),
        (s.b64(b'{"alg":"RS256"}') + ".***.c2ln", st.PAYLOAD_BAD_BASE64),
        (s.b64(b'{"alg":"RS256"}') + "." + s.b64(b"nope") + ".c2ln", st.PAYLOAD_BAD_JSON),
        (s.raw(RS, {"iss": 1}), st.not_string("iss")),
        (s.raw(RS, {"sub": []}), st.not_string("sub")),
        (s.raw(RS, {"jti": 2}), st.not_string("jti")),
        (s.raw(RS, {"exp": "soon"}), st.not_integer("exp")),
        (s.raw(RS, {"nbf": True}), st.not_integer("nbf")),
        (s.raw(RS, {"iat": -1}), st.out_of_range("iat")),
        (s.raw(RS, {"aud": 7}), st.AUD_NOT_STRING),
        (s.raw(RS, {"aud": ["a", 1]}), st.AUD_NOT_STRING),
        (s.b64(b'{"alg":"RS256"}') + ".e30.a+b", st.SIGNATURE_BAD_BASE64),
        (s.raw({"alg": "EdDSA"}, {}, b"short"), st.ED25519_SIGNATURE_LENGTH),
        (s.raw(RS, {"aud": ["a", "b"], "exp": 1.5}), st.OK),
    ],
)
def test_parse_failures_have_envoy_texts(token: str, status: str) -> None:
    assert status_of(token) == status


def test_alg_none_with_an_empty_signature_is_refused() -> None:
    token = s.b64(b'{"alg":"none"}') + "." + s.b64(b'{"sub":"x"}') + "."
    assert status_of(token) == st.HEADER_ALG_NOT_IMPLEMENTED


def test_time_constraints_with_clock_skew() -> None:
    now = 1_000_000
    expired = Jwt(s.raw(RS, {"exp": now - 61}).encode())
    assert expired.check_time(now, 60) == st.EXPIRED
    assert expired.check_time(now, 61) == st.OK  # within the skew
    early = Jwt(s.raw(RS, {"nbf": now + 61}).encode())
    assert early.check_time(now, 60) == st.NOT_YET_VALID
    assert early.check_time(now, 61) == st.OK
    forever = Jwt(s.raw(RS, {}).encode())
    assert forever.check_time(now, 0) == st.OK


def test_audiences_normalise_scheme_and_trailing_slash() -> None:
    allowed = frozenset(normalize_audience(a) for a in ["https://api.test/", "frontend"])
    assert audiences_allowed(allowed, ("api.test",))
    assert audiences_allowed(allowed, ("http://api.test",))
    assert audiences_allowed(allowed, ("other", "frontend"))
    assert not audiences_allowed(allowed, ("backend",))
    assert not audiences_allowed(allowed, ())  # a token without aud is not allowed
    assert audiences_allowed(frozenset(), ())  # no audiences configured: any token


def test_claims_become_header_values_as_envoy_writes_them() -> None:
    payload = {"s": "t1", "n": 42, "f": 1.5, "i": 3.0, "b": False, "o": {"k": "v"}, "l": [1]}
    assert claim_header_value(claim(payload, ("s",))) == b"t1"
    assert claim_header_value(claim(payload, ("n",))) == b"42"
    assert claim_header_value(claim(payload, ("f",))) == b"1.5"
    assert claim_header_value(claim(payload, ("i",))) == b"3"
    assert claim_header_value(claim(payload, ("b",))) == b"false"
    assert claim_header_value(claim(payload, ("o",))) == b"eyJrIjoidiJ9"  # base64 {"k":"v"}
    assert claim_header_value(claim(payload, ("l",))) == b"WzFd"
    assert claim_header_value(claim(payload, ("o", "k"))) == b"v"  # nested with dots
    assert claim(payload, ("s", "deeper")) is None
    assert claim(payload, ("absent",)) is None
    assert claim_header_value("") is None
    assert claim_header_value("evil\r\nx-injected: 1") is None  # never a header injection
