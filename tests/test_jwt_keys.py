"""dfproxy/jwt_authn/keys.py: key material (PEM, JWK, JWKS) and signature checks for every
algorithm family, including the refusals (algorithm confusion, kid/alg mismatch)."""

from __future__ import annotations

import json

import pytest

from dfproxy.jwt_authn import status as st
from dfproxy.jwt_authn.keys import parse_jwks, parse_key_text, verify_signature
from dfproxy.jwt_authn.status import JwksError
from dfproxy.jwt_authn.token import Jwt
from tests import jwt_support as s


def check(token: str, keys: str) -> str:
    jwt = Jwt(token.encode())
    return verify_signature(jwt.alg, jwt.kid, jwt.signed, jwt.signature, parse_key_text(keys))


@pytest.mark.parametrize(
    ("alg", "key"),
    [
        ("RS256", s.rsa_key),
        ("RS384", s.rsa_key),
        ("RS512", s.rsa_key),
        ("PS256", s.rsa_key),
        ("PS384", s.rsa_key),
        ("PS512", s.rsa_key),
        ("ES256", lambda: s.ec_key("P-256")),
        ("ES384", lambda: s.ec_key("P-384")),
        ("ES512", lambda: s.ec_key("P-521")),
        ("EdDSA", s.ed_key),
    ],
)
def test_every_asymmetric_algorithm_verifies_with_pem_jwk_and_jwks(alg: str, key: object) -> None:
    private = key()  # type: ignore[operator]
    token = s.sign(alg, private, s.claims())
    assert check(token, s.pem(private)) == st.OK
    assert check(token, json.dumps(s.jwk(private))) == st.OK
    assert check(token, s.jwks(s.jwk(private, alg=alg))) == st.OK
    # Another key of the same type: eligible, but the signature is not its.
    other = {"RSA": s.rsa_key(1), "EC": None, "OKP": s.ed_key(1)}
    if alg.startswith(("RS", "PS")) or alg == "EdDSA":
        spare = other["RSA" if alg != "EdDSA" else "OKP"]
        assert spare is not None
        assert check(token, s.pem(spare)) == st.VERIFICATION_FAIL


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_with_an_oct_jwk(alg: str) -> None:
    secret = b"s" * 64
    token = s.sign(alg, secret, s.claims())
    assert check(token, json.dumps(s.oct_jwk(secret))) == st.OK
    assert check(token, json.dumps(s.oct_jwk(b"t" * 64))) == st.VERIFICATION_FAIL


def test_algorithm_confusion_hs256_signed_with_the_rsa_public_key_is_refused() -> None:
    """RFC 8725 §2.1: the public key PEM used as an HMAC secret must never verify."""
    private = s.rsa_key()
    public_pem = s.pem(private)
    forged = s.hs_with_secret(public_pem.encode(), s.claims())
    assert check(forged, public_pem) == st.VERIFICATION_FAIL
    assert check(forged, json.dumps(s.jwk(private))) == st.VERIFICATION_FAIL
    # A key pinned to RS256 is not even eligible for an HS256 token.
    assert check(forged, s.jwks(s.jwk(private, alg="RS256"))) == st.KID_ALG_MISMATCH


def test_an_ec_token_never_verifies_against_a_key_of_another_curve_or_type() -> None:
    token = s.sign("ES256", s.ec_key("P-256"), s.claims())
    assert check(token, s.pem(s.ec_key("P-384"))) == st.VERIFICATION_FAIL
    assert check(token, s.pem(s.rsa_key())) == st.VERIFICATION_FAIL


def test_kid_selects_the_key_and_an_unknown_kid_is_a_mismatch() -> None:
    a, b = s.rsa_key(), s.rsa_key(1)
    keys = s.jwks(s.jwk(a, kid="a"), s.jwk(b, kid="b"))
    assert check(s.sign("RS256", b, s.claims(), kid="b"), keys) == st.OK
    assert check(s.sign("RS256", b, s.claims(), kid="c"), keys) == st.KID_ALG_MISMATCH
    # A token without kid tries every key (Envoy).
    assert check(s.sign("RS256", b, s.claims()), keys) == st.OK
    # Pinned alg: a PS256 token does not match an RS256-only key.
    pinned = s.jwks(s.jwk(a, alg="RS256"))
    assert check(s.sign("PS256", a, s.claims()), pinned) == st.KID_ALG_MISMATCH


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "invalid PEM public key"),
        ("not a key", "expected a PEM public key"),
        ("{not json", "Jwks is an invalid JSON"),
        ('{"keys": {}}', "[keys] in Jwks is not an array"),
        ('{"keys": []}', "Jwks doesn't have any valid public key"),
        ('{"kty": "XYZ"}', "[kty] is not supported"),
        ('{"n": "x"}', "[kty] is missing"),
        ('{"kty": "RSA", "alg": "RS999", "n": "AQAB", "e": "AQAB"}', "unknown algorithm 'RS999'"),
        ('{"kty": "RSA", "alg": "ES256", "n": "AQAB", "e": "AQAB"}', "algorithm 'ES256' for a RSA"),
        ('{"kty": "RSA", "n": "!!", "e": "AQAB"}', "invalid RSA key"),
        ('{"kty": "EC", "crv": "P-999", "x": "AA", "y": "AA"}', "not supported for an EC key"),
        ('{"kty": "oct"}', "[k] field is missing"),
        ('{"kty": "OKP", "crv": "X25519", "x": "AA"}', "Ed25519 only"),
    ],
)
def test_bad_key_material_says_why(text: str, message: str) -> None:
    with pytest.raises(JwksError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_key_text(text)


def test_an_ec_jwk_whose_alg_does_not_fit_its_curve_is_refused() -> None:
    bad = s.jwk(s.ec_key("P-384"), alg="ES256")
    with pytest.raises(JwksError, match="not compatible"):
        parse_key_text(json.dumps(bad))


def test_a_private_pem_is_not_accepted_as_a_public_key() -> None:
    from cryptography.hazmat.primitives import serialization

    private_pem = s.rsa_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(JwksError, match="invalid PEM public key"):
        parse_key_text(private_pem.decode())


def test_a_remote_jwks_skips_bad_keys_a_local_one_reports_them() -> None:
    doc = {"keys": [{"kty": "XYZ"}, s.jwk(s.rsa_key(), kid="good")]}
    keys = parse_jwks(doc, strict=False)
    assert [k.kid for k in keys] == ["good"]
    with pytest.raises(JwksError, match=r"keys\[0\]"):
        parse_jwks(doc, strict=True)


def test_a_jwk_with_private_parts_keeps_only_the_public_key() -> None:
    from jwt.algorithms import RSAAlgorithm

    private_jwk = RSAAlgorithm.to_jwk(s.rsa_key(), as_dict=True)
    (key,) = parse_key_text(json.dumps(private_jwk))
    assert not hasattr(key.obj, "private_numbers")
