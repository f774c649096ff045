"""Public keys for JWT verification: parsed once (at config load for ``jwks.local``, at fetch
for ``jwks.remote``) into ready key objects, then matched and checked per token.

Accepted forms (Gloo ``LocalJwks.key``): a PEM public key (RSA, EC P-256/P-384/P-521,
Ed25519), one JWK or a JWKS. HMAC secrets are JWKs of ``kty: oct``.

Algorithm confusion is impossible by construction: each algorithm names the key type it
verifies with (RFC 8725 §2.1, §3.1), so an HS256 token never meets an RSA or EC key as an
HMAC secret, and ``alg: none`` is not an algorithm here at all.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.exceptions import PyJWTError

from dfproxy.jwt_authn import status as st
from dfproxy.jwt_authn.status import JwksError

# A JWKS document larger than this is refused (a remote one is read with this bound too).
MAX_JWKS_BYTES = 512 * 1024

_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


class Key:
    """One verification key: ``kty`` RSA / EC / OKP / oct; ``kid`` and ``alg`` are "" when
    the key does not restrict them (Envoy tries such a key for every token)."""

    __slots__ = ("kid", "alg", "kty", "crv", "obj")

    def __init__(self, kty: str, obj: Any, *, kid: str = "", alg: str = "", crv: str = "") -> None:
        self.kty = kty
        self.obj = obj
        self.kid = kid
        self.alg = alg
        self.crv = crv

    def __repr__(self) -> str:
        return f"Key({self.kty}, kid={self.kid!r}, alg={self.alg!r}, crv={self.crv!r})"


Verify = Callable[[Any, bytes, bytes], bool]


def _rsa(hash_: hashes.HashAlgorithm, pad: padding.AsymmetricPadding) -> Verify:
    def verify(key: rsa.RSAPublicKey, sig: bytes, data: bytes) -> bool:
        try:
            key.verify(sig, data, pad, hash_)
        except InvalidSignature:
            return False
        return True

    return verify


def _pss(hash_: hashes.HashAlgorithm) -> Verify:
    # RFC 7518 §3.5: MGF1 with the same hash, salt as long as the hash output.
    return _rsa(hash_, padding.PSS(padding.MGF1(hash_), padding.PSS.DIGEST_LENGTH))


def _ec(hash_: hashes.HashAlgorithm, size: int) -> Verify:
    sig_alg = ec.ECDSA(hash_)

    def verify(key: ec.EllipticCurvePublicKey, sig: bytes, data: bytes) -> bool:
        # RFC 7518 §3.4: the JWS signature is R || S, each exactly ``size`` bytes.
        if len(sig) != 2 * size:
            return False
        r = int.from_bytes(sig[:size], "big")
        s = int.from_bytes(sig[size:], "big")
        try:
            key.verify(encode_dss_signature(r, s), data, sig_alg)
        except InvalidSignature:
            return False
        return True

    return verify


def _ed25519(key: ed25519.Ed25519PublicKey, sig: bytes, data: bytes) -> bool:
    try:
        key.verify(sig, data)
    except InvalidSignature:
        return False
    return True


def _hmac(name: str) -> Verify:
    def verify(secret: bytes, sig: bytes, data: bytes) -> bool:
        return hmac.compare_digest(hmac.digest(secret, data, name), sig)

    return verify


class Algorithm:
    """What an ``alg`` needs: the key type (and EC curve) and how to check a signature."""

    __slots__ = ("name", "kty", "crv", "verify")

    def __init__(self, name: str, kty: str, verify: Verify, crv: str = "") -> None:
        self.name = name
        self.kty = kty
        self.crv = crv
        self.verify = verify


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("RS256", "RSA", _rsa(hashes.SHA256(), padding.PKCS1v15())),
        Algorithm("RS384", "RSA", _rsa(hashes.SHA384(), padding.PKCS1v15())),
        Algorithm("RS512", "RSA", _rsa(hashes.SHA512(), padding.PKCS1v15())),
        Algorithm("PS256", "RSA", _pss(hashes.SHA256())),
        Algorithm("PS384", "RSA", _pss(hashes.SHA384())),
        Algorithm("PS512", "RSA", _pss(hashes.SHA512())),
        Algorithm("ES256", "EC", _ec(hashes.SHA256(), 32), "P-256"),
        Algorithm("ES384", "EC", _ec(hashes.SHA384(), 48), "P-384"),
        Algorithm("ES512", "EC", _ec(hashes.SHA512(), 66), "P-521"),
        Algorithm("EdDSA", "OKP", _ed25519, "Ed25519"),
        Algorithm("HS256", "oct", _hmac("sha256")),
        Algorithm("HS384", "oct", _hmac("sha384")),
        Algorithm("HS512", "oct", _hmac("sha512")),
    )
}


def verify_signature(
    alg: str, kid: str, signed: bytes, signature: bytes, keys: tuple[Key, ...]
) -> str:
    """Check a token's signature against a key set the way jwt_verify_lib does
    (``verifyJwtWithoutTimeChecking``): a key with a kid only serves tokens with that kid (or
    none), a key with an alg only tokens of that alg. Returns OK, ``Jwt verification fails``
    (some key was eligible) or ``Jwks doesn't have key to match kid or alg from Jwt``."""
    algorithm = ALGORITHMS[alg]  # the parser admits only these
    matched = False
    for key in keys:
        if kid and key.kid and key.kid != kid:
            continue
        if key.alg and key.alg != alg:
            continue
        matched = True
        # The key type must be the algorithm's: this is what refuses algorithm confusion.
        if key.kty != algorithm.kty or (algorithm.crv and key.crv != algorithm.crv):
            continue
        if algorithm.verify(key.obj, signature, signed):
            return st.OK
    return st.VERIFICATION_FAIL if matched else st.KID_ALG_MISMATCH


# -- parsing --------------------------------------------------------------------------------------


def _pem(text: str) -> Key:
    try:
        obj = serialization.load_pem_public_key(text.encode())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise JwksError(f"invalid PEM public key: {exc}") from None
    if isinstance(obj, rsa.RSAPublicKey):
        return Key("RSA", obj)
    if isinstance(obj, ec.EllipticCurvePublicKey):
        crv = _CURVES.get(obj.curve.name)
        if crv is None:
            raise JwksError(f"PEM EC key on an unsupported curve {obj.curve.name}")
        return Key("EC", obj, crv=crv)
    if isinstance(obj, ed25519.Ed25519PublicKey):
        return Key("OKP", obj, crv="Ed25519")
    raise JwksError(f"PEM Key type is not supported ({type(obj).__name__})")


_KTY_ALGS = {
    "RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    "EC": ("ES256", "ES384", "ES512"),
    "OKP": ("EdDSA",),
    "oct": ("HS256", "HS384", "HS512"),
}


def parse_jwk(jwk: Any) -> Key:
    """One JWK (RFC 7517) as a Key. Raises JwksError saying what is wrong."""
    if not isinstance(jwk, dict):
        raise JwksError("a JWK must be a JSON object")
    kty = jwk.get("kty")
    if kty is None:
        raise JwksError("[kty] is missing in [keys]")
    if not isinstance(kty, str):
        raise JwksError("[kty] is bad in [keys]")
    if kty not in _KTY_ALGS:
        raise JwksError(f"[kty] is not supported in [keys] (found: {kty!r})")
    kid = jwk.get("kid", "")
    if not isinstance(kid, str):
        raise JwksError("[kid] must be a string")
    alg = jwk.get("alg", "")
    if not isinstance(alg, str):
        raise JwksError("[alg] must be a string")
    if alg and alg not in _KTY_ALGS[kty]:
        known = alg in ALGORITHMS
        raise JwksError(
            f"{'' if known else 'unknown '}algorithm {alg!r} for a {kty} key; expected one of "
            + ", ".join(_KTY_ALGS[kty])
        )
    crv = jwk.get("crv", "")
    try:
        if kty == "RSA":
            obj: Any = RSAAlgorithm.from_jwk(jwk)
            if isinstance(obj, rsa.RSAPrivateKey):
                obj = obj.public_key()
        elif kty == "EC":
            if crv not in ("P-256", "P-384", "P-521"):
                raise JwksError(f"[crv] {crv!r} is not supported for an EC key")
            if alg and ALGORITHMS[alg].crv != crv:
                raise JwksError(f"[crv] {crv} is not compatible with [alg] {alg} for an EC key")
            obj = ECAlgorithm.from_jwk(jwk)
            if isinstance(obj, ec.EllipticCurvePrivateKey):
                obj = obj.public_key()
        elif kty == "OKP":
            if crv != "Ed25519":
                raise JwksError(f"[crv] {crv!r} is not supported for an OKP key (Ed25519 only)")
            obj = OKPAlgorithm.from_jwk(jwk)
            if isinstance(obj, ed25519.Ed25519PrivateKey):
                obj = obj.public_key()
            if not isinstance(obj, ed25519.Ed25519PublicKey):
                raise JwksError("an OKP key must be Ed25519")
        else:
            if not isinstance(jwk.get("k"), str):
                raise JwksError("[k] field is missing for an HMAC key")
            obj = HMACAlgorithm.from_jwk(jwk)
            if not obj:
                raise JwksError("an HMAC key must not be empty")
    except (PyJWTError, ValueError, TypeError, KeyError) as exc:
        if isinstance(exc, JwksError):
            raise
        raise JwksError(f"invalid {kty} key: {exc}") from None
    return Key(kty, obj, kid=kid, alg=alg, crv=crv if kty in ("EC", "OKP") else "")


def parse_jwks(doc: Any, *, strict: bool) -> tuple[Key, ...]:
    """The keys of a JWKS document (``{"keys": [...]}``). ``strict`` (config): any bad key
    is an error; otherwise (a remote document, as Envoy) bad keys are skipped and only a set
    with no usable key is an error."""
    if not isinstance(doc, dict) or "keys" not in doc:
        raise JwksError("Jwks does not have [keys] field")
    items = doc["keys"]
    if not isinstance(items, list):
        raise JwksError("[keys] in Jwks is not an array")
    keys: list[Key] = []
    for i, item in enumerate(items):
        try:
            keys.append(parse_jwk(item))
        except JwksError as exc:
            if strict:
                raise JwksError(f"keys[{i}]: {exc}") from None
    if not keys:
        raise JwksError(st.JWKS_NO_VALID_KEYS)
    return tuple(keys)


def parse_key_text(text: str, *, strict: bool = True) -> tuple[Key, ...]:
    """Gloo ``jwks.local.key`` (or a fetched document): a PEM public key, a JWK or a JWKS.
    Raises JwksError."""
    if len(text) > MAX_JWKS_BYTES:
        raise JwksError(f"key material larger than {MAX_JWKS_BYTES} bytes")
    body = text.strip()
    if body.startswith("-----BEGIN"):
        return (_pem(body),)
    if not body.startswith("{"):
        raise JwksError("expected a PEM public key (-----BEGIN PUBLIC KEY-----), a JWK or a JWKS")
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise JwksError(f"Jwks is an invalid JSON: {exc}") from None
    if isinstance(doc, dict) and "keys" in doc:
        return parse_jwks(doc, strict=strict)
    return (parse_jwk(doc),)
