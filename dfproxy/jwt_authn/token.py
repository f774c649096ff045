"""A JWT (RFC 7519) taken apart and its claims checked, as jwt_verify_lib's ``Jwt``
(``parseFromString``, ``verifyTimeConstraint``, ``CheckAudience``) does, with its texts.

Only JWS compact serialisation with an algorithm from ``keys.ALGORITHMS`` parses; ``alg:
none`` fails as "Jwt header [alg] is not supported" (RFC 8725 §3.1).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from dfproxy.jwt_authn import status as st
from dfproxy.jwt_authn.keys import ALGORITHMS
from dfproxy.jwt_authn.status import JwtError

# RFC 4648 §5 alphabet -> §4, so the strict C decoder can check every character.
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
_U64 = 1 << 64
ED25519_SIGNATURE_LEN = 64


def b64url_decode(text: bytes) -> bytes:
    """Base64url without padding (RFC 7515 §2); raises ValueError on any other character."""
    if b"+" in text or b"/" in text:
        raise ValueError("not base64url")
    text = text.rstrip(b"=")
    return binascii.a2b_base64(
        text.translate(_FROM_URLSAFE) + b"=" * (-len(text) % 4), strict_mode=True
    )


def b64url_encode(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _uint(payload: dict[str, Any], name: str) -> int:
    value = payload.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JwtError(st.not_integer(name))
    if value < 0 or value >= _U64:
        raise JwtError(st.out_of_range(name))
    return int(value)


class Jwt:
    """A parsed (not yet verified) token."""

    __slots__ = (
        "token",
        "alg",
        "kid",
        "header",
        "payload",
        "signed",
        "signature",
        "iss",
        "aud",
        "exp",
        "nbf",
    )

    def __init__(self, token: bytes) -> None:
        parts = token.split(b".")
        if len(parts) != 3:
            raise JwtError(st.BAD_FORMAT)
        head, body, sig = parts
        try:
            header_bytes = b64url_decode(head)
        except ValueError:
            raise JwtError(st.HEADER_BAD_BASE64) from None
        try:
            header = json.loads(header_bytes)
        except ValueError:
            raise JwtError(st.HEADER_BAD_JSON) from None
        if not isinstance(header, dict):
            raise JwtError(st.HEADER_BAD_JSON)
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise JwtError(st.HEADER_BAD_ALG)
        if alg not in ALGORITHMS:
            raise JwtError(st.HEADER_ALG_NOT_IMPLEMENTED)
        kid = header.get("kid", "")
        if not isinstance(kid, str):
            raise JwtError(st.HEADER_BAD_KID)
        try:
            payload_bytes = b64url_decode(body)
        except ValueError:
            raise JwtError(st.PAYLOAD_BAD_BASE64) from None
        try:
            payload = json.loads(payload_bytes)
        except ValueError:
            raise JwtError(st.PAYLOAD_BAD_JSON) from None
        if not isinstance(payload, dict):
            raise JwtError(st.PAYLOAD_BAD_JSON)
        iss = payload.get("iss", "")
        if not isinstance(iss, str):
            raise JwtError(st.not_string("iss"))
        for name in ("sub", "jti"):
            if not isinstance(payload.get(name, ""), str):
                raise JwtError(st.not_string(name))
        _uint(payload, "iat")
        nbf = _uint(payload, "nbf")
        exp = _uint(payload, "exp")
        aud = payload.get("aud")
        if aud is None:
            audiences: tuple[str, ...] = ()
        elif isinstance(aud, str):
            audiences = (aud,)
        elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
            audiences = tuple(aud)
        else:
            raise JwtError(st.AUD_NOT_STRING)
        try:
            signature = b64url_decode(sig)
        except ValueError:
            raise JwtError(st.SIGNATURE_BAD_BASE64) from None
        if alg == "EdDSA" and len(signature) != ED25519_SIGNATURE_LEN:
            raise JwtError(st.ED25519_SIGNATURE_LENGTH)
        self.token = token
        self.alg = alg
        self.kid = kid
        self.header = header
        self.payload = payload
        self.signed = token[: len(head) + 1 + len(body)]
        self.signature = signature
        self.iss = iss
        self.aud = audiences
        self.exp = exp
        self.nbf = nbf

    def check_time(self, now: int, clock_skew: int) -> str:
        """jwt_verify_lib ``verifyTimeConstraint``: not before ``nbf - skew``, not after
        ``exp + skew`` (a token without ``exp`` does not expire)."""
        if now + clock_skew < self.nbf:
            return st.NOT_YET_VALID
        if self.exp and now > self.exp + clock_skew:
            return st.EXPIRED
        return st.OK


def normalize_audience(aud: str) -> str:
    """jwt_verify_lib ``CheckAudience``: ``https://`` / ``http://`` and a trailing ``/`` do not
    count, so ``https://api.example.com/`` and ``api.example.com`` are the same audience."""
    for scheme in ("http://", "https://"):
        if aud.startswith(scheme):
            aud = aud[len(scheme) :]
            break
    return aud[:-1] if aud.endswith("/") else aud


def audiences_allowed(allowed: frozenset[str], audiences: tuple[str, ...]) -> bool:
    """No configured audiences: any token. Otherwise one of the token's must be listed."""
    if not allowed:
        return True
    return any(normalize_audience(a) in allowed for a in audiences)


def claim(payload: dict[str, Any], path: tuple[str, ...]) -> Any:
    """The claim at a dotted path (``realm.tenant``), or None."""
    value: Any = payload
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
        if value is None:
            return None
    return value


def claim_header_value(value: Any) -> bytes | None:
    """A claim as Envoy's ``addJWTClaimToHeader`` writes it: strings as they are, numbers
    (integers without ``.0``), ``true``/``false``, objects and lists as base64 of their JSON.
    None when there is nothing to write or the value could not be a header (RFC 9110 §5.5:
    no CR, LF or NUL; a claim must never inject a header)."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        text = str(int(value)) if value.is_integer() else repr(value)
    elif isinstance(value, dict | list):
        text = base64.b64encode(json.dumps(value, separators=(",", ":")).encode()).decode()
    else:
        return None
    if not text:
        return None
    data = text.encode("utf-8")
    if b"\r" in data or b"\n" in data or b"\x00" in data:
        return None
    return data.strip(b" \t") or None
