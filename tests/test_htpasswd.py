"""dfproxy.auth.htpasswd and dfproxy.auth.basic: entries, hashes, Basic credentials."""

from __future__ import annotations

import base64
import hashlib

import bcrypt
import pytest

from dfproxy.auth.basic import challenge, parse_basic
from dfproxy.auth.htpasswd import BCRYPT, SHA, parse_hash, parse_htpasswd, verify


def sha(password: bytes) -> str:
    return "{SHA}" + base64.b64encode(hashlib.sha1(password).digest()).decode()


@pytest.mark.parametrize("prefix", [b"$2y$", b"$2b$", b"$2a$"])
def test_bcrypt_variants_verify(prefix: bytes) -> None:
    h = prefix + bcrypt.hashpw(b"pw", bcrypt.gensalt(4))[4:]
    stored = parse_hash(h.decode())
    assert stored.scheme == BCRYPT and stored.expensive
    assert verify(stored, b"pw")
    assert not verify(stored, b"pW")


def test_bcrypt_long_password_is_truncated_at_72_bytes_as_apache_does() -> None:
    h = bcrypt.hashpw(b"x" * 72, bcrypt.gensalt(4))
    assert verify(parse_hash(h.decode()), b"x" * 100)


def test_sha_entry() -> None:
    stored = parse_hash(sha(b"secret"))
    assert stored.scheme == SHA and not stored.expensive
    assert verify(stored, b"secret")
    assert not verify(stored, b"Secret")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("$apr1$salt$hash", "MD5-apr1"),
        ("$1$salt$hash", "crypt(3)"),
        ("$6$salt$hash", "crypt(3)"),
        ("abcdefghijklm", "DES crypt"),
        ("secret", "unrecognised"),
        ("$2y$05$short", "malformed bcrypt"),
        ("$2y$99$" + "a" * 53, "cost 99"),
        ("{SHA}not base64!", "not base64"),
        ("{SHA}" + base64.b64encode(b"short").decode(), "not a SHA-1 digest"),
    ],
)
def test_unusable_hashes_say_why(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_hash(text)


def test_parse_file_keeps_good_lines_and_numbers_bad_ones() -> None:
    text = "\n".join(
        [
            "# users",
            f"bob:{sha(b'b')}",
            "",
            "broken",
            f"bob:{sha(b'c')}",
            "eve:$apr1$x$y",
            f"  carol:{sha(b'c')}  \r",
        ]
    )
    users, errors = parse_htpasswd(text)
    assert sorted(users) == ["bob", "carol"]
    assert [(e.line, str(e)) for e in errors] == [
        (4, "line 4: expected user:hash"),
        (5, "line 5: user 'bob' is listed twice"),
        (6, "line 6: user 'eve': " + _apr1_message()),
    ]


def _apr1_message() -> str:
    with pytest.raises(ValueError) as info:
        parse_hash("$apr1$")
    return str(info.value)


def test_basic_credentials() -> None:
    token = base64.b64encode("ünï:pa:ss".encode()).decode()
    assert parse_basic(f"Basic {token}".encode()) == ("ünï", b"pa:ss")
    assert parse_basic(f"bAsIc   {token} ".encode()) == ("ünï", b"pa:ss")
    assert parse_basic(b"Basic " + base64.b64encode(b":nouser")) is None
    assert parse_basic(b"Basic " + base64.b64encode(b"nocolon")) is None
    assert parse_basic(b"Basic " + base64.b64encode(b"\xff:x")) is None  # not UTF-8
    assert parse_basic(b"Basic !!") is None
    assert parse_basic(b"Basic ") is None
    assert parse_basic(b"Bearer abc") is None
    assert parse_basic(b"Basic " + b"A" * 5000) is None


def test_challenge() -> None:
    assert challenge("corp") == b'Basic realm="corp", charset="UTF-8"'
