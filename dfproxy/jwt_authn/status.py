"""Verification outcomes, worded exactly as jwt_verify_lib's ``getStatusString`` (Envoy's
``source/common/jwt/status.cc``): the 401/403 body a client sees is this text."""

from __future__ import annotations

OK = "OK"
MISSING = "Jwt is missing"
NOT_YET_VALID = "Jwt not yet valid"
EXPIRED = "Jwt is expired"
BAD_FORMAT = "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
HEADER_BAD_BASE64 = "Jwt header is an invalid Base64url encoded"
HEADER_BAD_JSON = "Jwt header is an invalid JSON"
HEADER_BAD_ALG = "Jwt header [alg] field is required and must be a string"
HEADER_ALG_NOT_IMPLEMENTED = "Jwt header [alg] is not supported"
HEADER_BAD_KID = "Jwt header [kid] field is not a string"
PAYLOAD_BAD_BASE64 = "Jwt payload is an invalid Base64url encoded"
ED25519_SIGNATURE_LENGTH = "Jwt ED25519 signature is wrong length"
PAYLOAD_BAD_JSON = "Jwt payload is an invalid JSON"
SIGNATURE_BAD_BASE64 = "Jwt signature is an invalid Base64url encoded"
UNKNOWN_ISSUER = "Jwt issuer is not configured"
AUDIENCE_NOT_ALLOWED = "Audiences in Jwt are not allowed"
VERIFICATION_FAIL = "Jwt verification fails"
KID_ALG_MISMATCH = "Jwks doesn't have key to match kid or alg from Jwt"
JWKS_FETCH_FAIL = "Jwks remote fetch is failed"
JWKS_NO_VALID_KEYS = "Jwks doesn't have any valid public key"


def not_string(claim: str) -> str:
    """``Jwt payload [iss] field is not a string`` (also sub, jti)."""
    return f"Jwt payload [{claim}] field is not a string"


def not_integer(claim: str) -> str:
    """``Jwt payload [exp] field is not an integer`` (also iat, nbf)."""
    return f"Jwt payload [{claim}] field is not an integer"


def out_of_range(claim: str) -> str:
    return f"Jwt payload [{claim}] field is not a positive 64 bit integer"


AUD_NOT_STRING = "Jwt payload [aud] field is not a string or string list"

# Statuses an "any of these providers" requirement treats as "no token for this provider"
# (Envoy verifier.cc AnyVerifierImpl: a token from another issuer is not a failure here).
MISSING_LIKE = frozenset((MISSING, UNKNOWN_ISSUER))


def http_status(status: str) -> int:
    """Envoy filter.cc: 403 for a disallowed audience, 401 for everything else."""
    return 403 if status == AUDIENCE_NOT_ALLOWED else 401


def details(status: str) -> str:
    """Envoy's response code details: ``jwt_authn_access_denied{Jwt_is_missing}`` (spaces
    become underscores so access-log fields stay whitespace-free)."""
    return "jwt_authn_access_denied{" + "_".join(status.split()) + "}"


class JwtError(Exception):
    """A token that cannot be parsed; ``status`` is the Envoy text."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class JwksError(ValueError):
    """A key, JWK or JWKS that cannot be used (config errors, bad remote documents)."""
