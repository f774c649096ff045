"""dfproxy/jwt_authn/provider.py: one provider's checks in Envoy's order, OR-ed providers and
the validation policies."""

from __future__ import annotations

import time

from dfproxy.jwt_authn import status as st
from dfproxy.jwt_authn.extract import DEFAULT_LOCATIONS, HeaderLocation
from dfproxy.jwt_authn.keys import Key, parse_key_text
from dfproxy.jwt_authn.provider import (
    ALLOW_MISSING,
    ALLOW_MISSING_OR_FAILED,
    WAIT,
    LocalKeys,
    Provider,
    Requirement,
    claim_headers,
)
from dfproxy.jwt_authn.token import normalize_audience
from tests import jwt_support as s
from tests.fake_request import FakeRequest

RSA = s.rsa_key()
EC = s.ec_key()


def provider(name: str = "p", key: object = RSA, **kw: object) -> Provider:
    keys = parse_key_text(s.pem(key))  # type: ignore[arg-type]
    kw.setdefault("locations", DEFAULT_LOCATIONS)
    if "audiences" in kw:
        kw["audiences"] = frozenset(normalize_audience(a) for a in kw["audiences"])  # type: ignore[attr-defined]
    return Provider(name, LocalKeys(keys), **kw)  # type: ignore[arg-type]


def local(p: Provider) -> tuple[Key, ...] | str:
    keys = p.keys.current()
    assert keys is not None
    return keys


def decide(req: Requirement, token: str | None = None, **kw: str) -> tuple[bool, str]:
    headers = [("authorization", f"Bearer {token}")] if token else []
    d = req.evaluate(FakeRequest(headers, **kw), int(time.time()), local)
    return d.allowed, d.status


def test_one_provider_checks_in_envoy_order() -> None:
    req = Requirement((provider(issuer="issuer.test", audiences=["frontend"]),))
    good = s.claims(aud="frontend")
    assert decide(req, s.sign("RS256", RSA, good)) == (True, st.OK)
    assert decide(req) == (False, st.MISSING)
    assert decide(req, "garbage") == (False, st.BAD_FORMAT)
    assert decide(req, s.sign("RS256", RSA, {**good, "iss": "other"})) == (False, st.UNKNOWN_ISSUER)
    # Expiry is checked before the signature (a bad signature on an expired token: expired).
    expired = {**good, "exp": int(time.time()) - 3600}
    assert decide(req, s.sign("RS256", s.rsa_key(1), expired)) == (False, st.EXPIRED)
    early = {**good, "nbf": int(time.time()) + 3600}
    assert decide(req, s.sign("RS256", RSA, early)) == (False, st.NOT_YET_VALID)
    wrong_aud = {**good, "aud": "backend"}
    assert decide(req, s.sign("RS256", RSA, wrong_aud)) == (False, st.AUDIENCE_NOT_ALLOWED)
    assert decide(req, s.sign("RS256", s.rsa_key(1), good)) == (False, st.VERIFICATION_FAIL)
    assert decide(req, s.hs_with_secret(s.pem(RSA).encode(), good)) == (False, st.VERIFICATION_FAIL)


def test_clock_skew_is_per_provider_and_zero_means_sixty() -> None:
    token = s.sign("RS256", RSA, s.claims(exp=int(time.time()) - 30))
    assert decide(Requirement((provider(),)), token) == (True, st.OK)  # default 60 s
    assert decide(Requirement((provider(clock_skew=0),)), token) == (True, st.OK)
    assert decide(Requirement((provider(clock_skew=5),)), token) == (False, st.EXPIRED)


def test_every_token_found_must_verify() -> None:
    p = provider(locations=DEFAULT_LOCATIONS)
    good = s.sign("RS256", RSA, s.claims())
    bad = s.sign("RS256", s.rsa_key(1), s.claims())
    req = Requirement((p,))
    assert decide(req, good, path=f"/?access_token={good}") == (True, st.OK)
    assert decide(req, good, path=f"/?access_token={bad}") == (False, st.VERIFICATION_FAIL)


def test_providers_are_or_ed_and_the_last_real_failure_is_reported() -> None:
    a = provider("a", RSA, issuer="a.test")
    b = provider("b", EC, issuer="b.test")
    req = Requirement((a, b))
    assert decide(req, s.sign("ES256", EC, s.claims(iss="b.test"))) == (True, st.OK)
    assert decide(req, s.sign("RS256", RSA, s.claims(iss="a.test"))) == (True, st.OK)
    # b's failure is real; a's "issuer not configured" is not a failure of a's own.
    forged = s.sign("ES256", s.ec_key(n=1), s.claims(iss="b.test"))
    assert decide(req, forged) == (False, st.VERIFICATION_FAIL)
    # Nobody's issuer: "missing" for an OR of providers (Envoy AnyVerifier).
    assert decide(req, s.sign("RS256", RSA, s.claims(iss="c.test"))) == (False, st.MISSING)


def test_validation_policies() -> None:
    p = provider(issuer="issuer.test")
    bad = s.sign("RS256", s.rsa_key(1), s.claims())
    other_issuer = s.sign("RS256", RSA, s.claims(iss="elsewhere"))
    missing = Requirement((p,), ALLOW_MISSING)
    assert decide(missing) == (True, st.MISSING)
    assert decide(missing, other_issuer) == (True, st.MISSING)  # another issuer: missing-like
    assert decide(missing, bad) == (False, st.VERIFICATION_FAIL)
    lenient = Requirement((p,), ALLOW_MISSING_OR_FAILED)
    assert decide(lenient) == (True, st.MISSING)
    assert decide(lenient, bad) == (True, st.VERIFICATION_FAIL)
    assert decide(lenient, s.sign("RS256", RSA, s.claims())) == (True, st.OK)


def test_claims_of_the_accepting_provider() -> None:
    from dfproxy.jwt_authn.provider import ClaimHeader

    p = provider(
        claims=(
            ClaimHeader(("tenantId",), b"x-tenant", False),
            ClaimHeader(("org", "id"), b"x-org", True),
            ClaimHeader(("absent",), b"x-absent", False),
        ),
        locations=(HeaderLocation(b"authorization", b"Bearer "),),
    )
    token = s.sign("RS256", RSA, s.claims(tenantId="t1", org={"id": 7}))
    d = Requirement((p,)).evaluate(
        FakeRequest([("authorization", f"Bearer {token}")]), int(time.time()), local
    )
    assert d.accepted is not None
    assert claim_headers(d.accepted) == [(b"x-tenant", b"t1"), (b"x-org", b"7")]


def test_keys_being_fetched_make_the_request_wait_unless_another_provider_accepts() -> None:
    a = provider("a", RSA)

    def remote_pending(p: Provider) -> tuple[Key, ...] | str:
        return WAIT if p.name == "r" else local(p)

    r = provider("r", EC)
    req = Requirement((r, a))
    good_a = s.sign("RS256", RSA, s.claims())
    good_r = s.sign("ES256", EC, s.claims())
    now = int(time.time())
    auth = [("authorization", f"Bearer {good_a}")]
    assert req.evaluate(FakeRequest(auth), now, remote_pending).allowed
    auth = [("authorization", f"Bearer {good_r}")]
    assert req.evaluate(FakeRequest(auth), now, remote_pending).status == WAIT


def test_verified_tokens_are_remembered_only_with_the_same_keys_and_while_in_time() -> None:
    class Swappable:
        def __init__(self, keys: tuple[Key, ...]) -> None:
            self.keys = keys

        def current(self) -> tuple[Key, ...] | None:
            return self.keys

    source = Swappable(parse_key_text(s.pem(RSA)))
    p = Provider("p", source, locations=DEFAULT_LOCATIONS)
    req = Requirement((p,))
    now = int(time.time())
    token = s.sign("RS256", RSA, s.claims(exp=now + 100))
    auth = [("authorization", f"Bearer {token}")]

    def keys_of(p: Provider) -> tuple[Key, ...] | str:
        return source.keys

    assert req.evaluate(FakeRequest(auth), now, keys_of).allowed
    assert token.encode() in p.verified
    assert req.evaluate(FakeRequest(auth), now, keys_of).allowed  # from the cache
    # Past its expiry (and the skew) the remembered token fails as expired.
    late = req.evaluate(FakeRequest(auth), now + 200, keys_of)
    assert (late.allowed, late.status) == (False, st.EXPIRED)
    assert req.evaluate(FakeRequest(auth), now, keys_of).allowed
    # The keys rotate: the remembered token is verified again, and fails.
    source.keys = parse_key_text(s.pem(s.rsa_key(1)))
    rotated = req.evaluate(FakeRequest(auth), now, keys_of)
    assert (rotated.allowed, rotated.status) == (False, st.VERIFICATION_FAIL)
