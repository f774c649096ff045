"""Unit tests for dfproxy.http.authority (Envoy parseAuthority / getPortStart semantics)."""

from __future__ import annotations

import pytest

from dfproxy.http.authority import (
    Authority,
    AuthorityError,
    is_ip_literal,
    parse_authority,
    split_host_port,
)


# ---------------------------------------------------------------------------- split_host_port
@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("example.com:8080", "example.com", 8080),
        ("example.com", "example.com", None),
        ("127.0.0.1:80", "127.0.0.1", 80),
        ("127.0.0.1", "127.0.0.1", None),
        ("[::1]:8080", "::1", 8080),
        ("[::1]", "::1", None),
        ("[2001:db8::1]:443", "2001:db8::1", 443),
        ("a:1", "a", 1),
        ("a:65535", "a", 65535),
        ("a:080", "a", 80),  # leading zeros are still a decimal port
        ("Example.COM:81", "Example.COM", 81),  # split keeps case; parse_authority lowers
    ],
)
def test_split_host_port(text: str, host: str, port: int | None) -> None:
    assert split_host_port(text) == (host, port)


@pytest.mark.parametrize(
    "text",
    [
        "",  # empty authority
        ":80",  # empty host
        "[]:80",  # empty IPv6 literal
        "[]",
        "::1",  # bare IPv6: must be bracketed
        "::1:8080",
        "2001:db8::1",
        "fe80::1",
        "[::1",  # unterminated literal
        "[::1:8080",
        "[::1]8080",  # junk after the bracket
        "[::1]:",  # colon without digits
        "[::1]:http",
        "host:",  # colon without digits
        "host:http",
        "host:-1",
        "host:+80",
        "host:8 0",
        "host:0",  # port 0 is not a destination
        "host:65536",
        "host:99999999999999999999999999",  # huge
        "[::1]:65536",
        "[::1]:0",
    ],
)
def test_split_host_port_rejects(text: str) -> None:
    with pytest.raises(AuthorityError):
        split_host_port(text)


@pytest.mark.parametrize("port_text", ["\u00b2", "\u00b9\u00b3", "\u0661\u0662", "\uff18\uff10"])
def test_split_host_port_non_ascii_digits_raise_authority_error(port_text: str) -> None:
    """Only ASCII digits form a port (RFC 3986 §3.2.3 ``port = *DIGIT``).

    ``str.isdigit()`` is true for superscripts and other scripts' digits; a Host header is
    decoded as latin-1, so ``Host: a:\\xb2`` reaches this function as ``"a:²"``. Whatever the
    outcome, it must be AuthorityError (callers catch only that), never a bare ValueError.
    """
    with pytest.raises(AuthorityError):
        split_host_port(f"example.com:{port_text}")
    with pytest.raises(AuthorityError):
        split_host_port(f"[::1]:{port_text}")


def test_authority_error_is_value_error() -> None:
    assert issubclass(AuthorityError, ValueError)


# ---------------------------------------------------------------------------- is_ip_literal
@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "10.1.2.3", "0.0.0.0", "255.255.255.255", "::1", "::", "2001:db8::1", "fe80::1"],
)
def test_is_ip_literal_true(host: str) -> None:
    assert is_ip_literal(host)


@pytest.mark.parametrize(
    "host",
    [
        "example.com",
        "localhost",
        "something.test",
        "1.2.3",  # not a dotted quad
        "256.1.1.1",
        "1.2.3.4.5",
        "1example.com",
        "123",
        "::g",
        "1.2.3.4x",
    ],
)
def test_is_ip_literal_false(host: str) -> None:
    assert not is_ip_literal(host)


# ---------------------------------------------------------------------------- parse_authority
def test_parse_authority_with_port() -> None:
    a = parse_authority("example.com:8080", 80)
    assert a == Authority("example.com", 8080, False)
    assert a.key == "example.com:8080"


def test_parse_authority_default_port_80() -> None:
    """No port: the listener's default (80 for http://) fills in, and the key carries it."""
    a = parse_authority("example.com", 80)
    assert (a.host, a.port, a.is_ip) == ("example.com", 80, False)
    assert a.key == "example.com:80"


def test_parse_authority_default_port_other() -> None:
    assert parse_authority("example.com", 443).port == 443
    assert parse_authority("example.com:8443", 443).port == 8443


def test_parse_authority_lowercases_host() -> None:
    a = parse_authority("API.Example.COM:81", 80)
    assert a.host == "api.example.com"
    assert a.key == "api.example.com:81"


def test_parse_authority_ipv4_literal() -> None:
    a = parse_authority("127.0.0.1:9000", 80)
    assert a == Authority("127.0.0.1", 9000, True)
    assert a.key == "127.0.0.1:9000"
    assert parse_authority("127.0.0.1", 80).key == "127.0.0.1:80"


def test_parse_authority_ipv6_with_port_keeps_brackets_in_key() -> None:
    a = parse_authority("[::1]:8080", 80)
    assert a.host == "::1"  # no brackets: what the resolver and connect use
    assert a.port == 8080
    assert a.is_ip
    assert a.key == "[::1]:8080"


def test_parse_authority_ipv6_without_port() -> None:
    """Envoy getPortStart: ``[::1]`` has no port, so the key is ``[::1]:80``."""
    a = parse_authority("[::1]", 80)
    assert (a.host, a.port, a.is_ip) == ("::1", 80, True)
    assert a.key == "[::1]:80"


def test_parse_authority_ipv6_uppercase_is_lowercased() -> None:
    a = parse_authority("[2001:DB8::A]:1", 80)
    assert a.host == "2001:db8::a"
    assert a.key == "[2001:db8::a]:1"
    assert a.is_ip


@pytest.mark.parametrize("text", ["", "::1", "[::1", "host:99999", "host:0", ":80", "a:b"])
def test_parse_authority_rejects(text: str) -> None:
    with pytest.raises(AuthorityError):
        parse_authority(text, 80)


def test_parse_authority_name_that_looks_numeric_is_not_ip() -> None:
    a = parse_authority("1.2.3:80", 80)
    assert not a.is_ip
    assert a.key == "1.2.3:80"


def test_authority_key_for_name() -> None:
    assert Authority("h", 1, False).key == "h:1"
    assert Authority("::1", 1, True).key == "[::1]:1"


@pytest.mark.parametrize(
    "text",
    [
        "bl\\ocked.test",
        "\\098locked.test",
        "bloc\xadked.test",
        "bl\xbacked.test:80",
        "a b.test",
        "user@host.test",
        "[bl\\ocked.test]:80",
        "host.test\x00x",
    ],
)
def test_parse_authority_refuses_characters_rfc3986_does_not_allow(text: str) -> None:
    """The resolver would read these as another name (c-ares escapes, IDNA mapping)."""
    with pytest.raises(AuthorityError, match="is not allowed in a host"):
        parse_authority(text, 80)


@pytest.mark.parametrize(
    "text", ["a-b_c~d.test", "x!$&'()*+,;=.test", "a%41.test", "[fe80::1%25lo]"]
)
def test_parse_authority_accepts_rfc3986_host_characters(text: str) -> None:
    assert parse_authority(text, 80).port == 80
