"""The Basic authentication scheme's credentials (RFC 7617) as sent in Proxy-Authorization
(RFC 9110 §11.7.1)."""

from __future__ import annotations

import base64
import binascii

# A credential longer than this is refused before decoding (user + password, base64).
MAX_CREDENTIALS = 4096


def challenge(realm: str) -> bytes:
    """The Proxy-Authenticate value (RFC 7617 §2: realm is required; charset says UTF-8)."""
    return f'Basic realm="{realm}", charset="UTF-8"'.encode()


def parse_basic(value: bytes) -> tuple[str, bytes] | None:
    """(user-id, password) from ``Basic <token68>``, or None when the value is not Basic
    credentials or is malformed. The scheme is case-insensitive (RFC 9110 §11.1)."""
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    token = token.strip()
    if not token or len(token) > MAX_CREDENTIALS:
        return None
    try:
        decoded = base64.b64decode(token, validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep or not user:
        return None
    try:
        # RFC 7617 §2.1: with charset="UTF-8" the client sends UTF-8.
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


def credential_key(value: bytes) -> bytes:
    """What the verified-credentials cache is keyed by: the token exactly as received (one
    byte different is another credential)."""
    return value.strip()
