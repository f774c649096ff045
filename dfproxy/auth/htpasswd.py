"""htpasswd entries: parsing (with line numbers for config errors) and verification.

Supported, as Apache's ``htpasswd`` writes them: bcrypt (``-B``: ``$2y$``, also ``$2b$`` and
``$2a$``) and SHA-1 (``-s``: ``{SHA}`` + base64 of the digest). Refused at config load, with a
message saying what to use instead: MD5-apr1 (``$apr1$``, htpasswd's default; no maintained
Python library verifies it), crypt(3) (``$1$``/``$5$``/``$6$``, DES) and plain text.

SHA-1 is unsalted and fast: accepted for compatibility, bcrypt is what to use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

import bcrypt

BCRYPT = "bcrypt"
SHA = "sha"

# Modular crypt format of bcrypt: $2y$NN$ + 22 salt chars + 31 hash chars.
_BCRYPT = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
# bcrypt (the algorithm) uses at most 72 bytes of the password; Apache truncates too, and
# pyca/bcrypt >= 5 raises instead, so the check truncates as the hash's writer did.
BCRYPT_MAX_PASSWORD = 72


class HtpasswdError(ValueError):
    """An entry cannot be used; ``line`` is 1-based (0: not from a file)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


@dataclass(frozen=True, slots=True)
class PasswordHash:
    scheme: str  # BCRYPT or SHA
    value: bytes  # bcrypt: the whole hash; SHA: the 20-byte digest

    @property
    def expensive(self) -> bool:
        """Whether a check costs milliseconds (run it off the event loop)."""
        return self.scheme == BCRYPT


def parse_hash(text: str) -> PasswordHash:
    """The stored hash of one entry. Raises ValueError saying why it cannot be used."""
    if text.startswith("$2"):
        m = _BCRYPT.match(text)
        if m is None:
            raise ValueError("malformed bcrypt hash (expected $2y$NN$ and 53 characters)")
        cost = int(m.group(1))
        if not 4 <= cost <= 31:
            raise ValueError(f"bcrypt cost {cost} is outside 4..31")
        return PasswordHash(BCRYPT, text.encode("ascii"))
    if text.startswith("{SHA}"):
        try:
            digest = base64.b64decode(text[5:], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("malformed {SHA} hash (not base64)") from None
        if len(digest) != 20:
            raise ValueError("malformed {SHA} hash (not a SHA-1 digest)")
        return PasswordHash(SHA, digest)
    if text.startswith("$apr1$"):
        raise ValueError(
            "MD5-apr1 ($apr1$) hashes are not supported; re-create the entry with "
            "'htpasswd -B' (bcrypt)"
        )
    if text.startswith(("$1$", "$5$", "$6$", "$md5")):
        raise ValueError(
            "crypt(3) hashes ($1$, $5$, $6$) are not supported; use 'htpasswd -B' (bcrypt)"
        )
    if len(text) == 13 and re.fullmatch(r"[./A-Za-z0-9]{13}", text):
        raise ValueError("DES crypt hashes are not supported; use 'htpasswd -B' (bcrypt)")
    raise ValueError(
        "unrecognised password hash (plain text?); expected bcrypt ($2y$...) or {SHA}..."
    )


def parse_htpasswd(text: str) -> tuple[dict[str, PasswordHash], list[HtpasswdError]]:
    """Every usable ``user:hash`` line, and an error for each line that is not. Blank lines
    and ``#`` comments are skipped; a user listed twice is an error (which one counts?)."""
    users: dict[str, PasswordHash] = {}
    errors: list[HtpasswdError] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, stored = line.partition(":")
        if not sep or not name or not stored:
            errors.append(HtpasswdError(number, "expected user:hash"))
            continue
        if name in users:
            errors.append(HtpasswdError(number, f"user {name!r} is listed twice"))
            continue
        try:
            users[name] = parse_hash(stored)
        except ValueError as exc:
            errors.append(HtpasswdError(number, f"user {name!r}: {exc}"))
    return users, errors


_BCRYPT_ALPHABET = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def decoy_hash(users: dict[str, PasswordHash]) -> PasswordHash | None:
    """A bcrypt hash no password matches, as costly to check as the costliest entry (None
    without bcrypt entries). Checking an unknown user against it takes as long as a wrong
    password for a real one, so the answer's delay does not tell which users exist
    (CWE-208). A fresh salt and a random digest: no hashing is done to make it."""
    costs = [int(h.value[4:6]) for h in users.values() if h.scheme == BCRYPT]
    if not costs:
        return None
    digest = bytes(_BCRYPT_ALPHABET[b % 64] for b in os.urandom(31))
    return PasswordHash(BCRYPT, bcrypt.gensalt(max(costs)) + digest)


def verify(stored: PasswordHash, password: bytes) -> bool:
    """Whether ``password`` matches (constant time in the password). A bcrypt check costs
    milliseconds (cost 5: ~3 ms, cost 10: ~80 ms here): call it from a worker thread."""
    if stored.scheme == SHA:
        return hmac.compare_digest(hashlib.sha1(password).digest(), stored.value)
    try:
        return bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD], stored.value)
    except ValueError:
        return False
