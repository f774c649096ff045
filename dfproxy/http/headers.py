"""Header classification and serialisation for forwarding (RFC 9110 §7.6.1, RFC 9112).

Pure functions over header lists: ``list[tuple[bytes, bytes]]`` as the codec received them,
names in their original case. One pass per message; the codec calls them at headers-complete.
"""

from __future__ import annotations

from typing import Final, NamedTuple

Headers = list[tuple[bytes, bytes]]

# RFC 9110 §7.6.1 plus the proxy-only fields. Transfer-Encoding is re-framed by us; Upgrade
# is put back explicitly when an upgrade is being forwarded.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)


class HeaderError(ValueError):
    """A header makes the message unusable; the text says why (sent to the client)."""


class RequestHeaders(NamedTuple):
    """What forwarding needs from a request head."""

    forward: Headers  # end-to-end headers (Content-Length kept), Host and framing removed
    host: bytes | None  # the Host header value (None when absent)
    content_length: int | None
    chunked: bool
    upgrade: bytes | None  # the Upgrade token when Connection lists "upgrade"
    expect_continue: bool
    close: bool  # Connection: close was sent
    # Proxy-Authorization (hop-by-hop, never forwarded), kept for the proxy_auth filter.
    proxy_authorization: bytes | None = None


class ResponseHeaders(NamedTuple):
    """What forwarding needs from a response head."""

    forward: Headers  # end-to-end headers; Content-Length kept unless chunked
    content_length: int | None
    chunked: bool
    close: bool
    upgrade: bytes | None


# The Connection values nearly every message carries, with what they mean (close, upgrade).
_SIMPLE_CONNECTION = {
    b"keep-alive": (False, False),
    b"close": (True, False),
    b"upgrade": (False, True),
}
# The same, by the exact bytes most peers send: no strip()/lower() for those.
_SIMPLE_CONNECTION_RAW = {
    **_SIMPLE_CONNECTION,
    b"Keep-Alive": (False, False),
    b"Close": (True, False),
    b"Upgrade": (False, True),
}


def _simple_connection(connection: list[bytes]) -> tuple[bool, bool] | None:
    """(close, upgrade) for a single well-known Connection value, else None."""
    if len(connection) != 1:
        return None
    value = connection[0]
    simple = _SIMPLE_CONNECTION_RAW.get(value)
    if simple is None:
        simple = _SIMPLE_CONNECTION.get(value.strip().lower())
    return simple


def _connection_tokens(values: list[bytes]) -> set[bytes]:
    tokens: set[bytes] = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return tokens


def _content_length(value: bytes, current: int | None) -> int:
    # RFC 9110 §8.6: a list of identical values may be collapsed; anything else is an error.
    # RFC 9110 §8.6: Content-Length = 1*DIGIT (int() would also take "+5" and "1_0").
    if value.isdigit() and current is None:  # the usual case: one plain number
        return int(value)
    parts = [v.strip() for v in value.split(b",")]
    if not all(p.isdigit() for p in parts):  # bytes.isdigit() is ASCII-only
        raise HeaderError("invalid Content-Length")
    length = int(parts[0])
    if any(int(p) != length for p in parts):
        raise HeaderError("conflicting Content-Length values")
    if length < 0 or (current is not None and current != length):
        raise HeaderError("conflicting Content-Length values")
    return length


# Header name -> what the proxy does with it, memoised by the exact bytes received. Most
# traffic repeats a few spellings ("Content-Length", "content-length"), so the .lower() and
# the set lookups happen once per spelling, not once per header (bench/hotpath.py).
PLAIN: Final = 0
LENGTH: Final = 1
TRANSFER: Final = 2
CONNECTION: Final = 3
UPGRADE: Final = 4
HOST: Final = 5
EXPECT: Final = 6
HOP: Final = 7
PROXY_AUTH: Final = 8
# Proxy-Connection lists tokens like Connection in requests; a response's is only dropped.
# Its own kind spares classify_response a .lower() per Connection header.
PROXY_CONNECTION: Final = 9
_KINDS = {
    b"content-length": LENGTH,
    b"transfer-encoding": TRANSFER,
    b"connection": CONNECTION,
    b"proxy-connection": PROXY_CONNECTION,
    b"upgrade": UPGRADE,
    b"host": HOST,
    b"expect": EXPECT,
    b"proxy-authorization": PROXY_AUTH,
}
_kind_cache: dict[bytes, int] = {}
_KIND_CACHE_MAX: Final = 4096
# The classifiers below read _kind_cache[name] and fall back to header_kind() on KeyError: a
# subscript is specialised by CPython, dict.get() is a method call (with the PLAIN-first
# test and the inline Content-Length: -27 % instructions in classify_response, -24 % in
# classify_request, for typical heads (callgrind).

# NamedTuple's generated __new__ is a Python function; tuple.__new__ on the field tuple
# builds the same object in C (3,900 -> 2,600 instructions per message, callgrind).
_tuple_new = tuple.__new__


def header_kind(name: bytes) -> int:
    kind = _kind_cache.get(name)
    if kind is None:
        lname = name.lower()
        kind = _KINDS.get(lname, HOP if lname in HOP_BY_HOP else PLAIN)
        if len(_kind_cache) >= _KIND_CACHE_MAX:
            _kind_cache.clear()
        _kind_cache[name] = kind
    return kind


def _strip_listed(forward: Headers, connection: list[bytes]) -> tuple[Headers, set[bytes]]:
    """RFC 9110 §7.6.1: the fields named by Connection are hop-by-hop too."""
    tokens = _connection_tokens(connection)
    listed = tokens - {b"close", b"keep-alive", b"upgrade"}
    if listed:
        forward = [(n, v) for n, v in forward if n.lower() not in listed]
    return forward, tokens


def classify_request(raw: Headers) -> RequestHeaders:
    """Split a request's headers into what is forwarded and what the proxy acts on.

    Raises HeaderError on an invalid Content-Length or several Host headers (RFC 9112 §3.2).
    """
    forward: Headers = []
    host: bytes | None = None
    length: int | None = None
    length_header: tuple[bytes, bytes] | None = None
    chunked = False
    connection: list[bytes] = []
    upgrade: bytes | None = None
    expect = False
    proxy_auth: bytes | None = None
    for header in raw:
        try:
            kind = _kind_cache[header[0]]
        except KeyError:
            kind = header_kind(header[0])
        if kind == PLAIN:
            forward.append(header)
        elif kind == HOST:
            if host is not None:
                raise HeaderError("multiple Host headers")
            host = header[1].strip()
        elif kind == LENGTH:
            value = header[1]
            if length is None and value.isdigit():  # the usual case: one plain number
                length = int(value)
            else:
                length = _content_length(value, length)
            if length_header is None:
                length_header = header
                forward.append(header)
        elif kind == TRANSFER:
            chunked = header[1].strip().lower().endswith(b"chunked")
        elif kind in (CONNECTION, PROXY_CONNECTION):
            connection.append(header[1])
        elif kind == UPGRADE:
            upgrade = header[1].strip()
        elif kind == EXPECT:
            if header[1].strip().lower() == b"100-continue":
                expect = True
            else:
                forward.append(header)
        elif kind == PROXY_AUTH and proxy_auth is None:
            proxy_auth = header[1]  # the first, as any single-valued field
    close = False
    if not connection:
        upgrade = None
    else:
        simple = _simple_connection(connection)
        if simple is not None:
            close, upgrading = simple
        else:
            forward, tokens = _strip_listed(forward, connection)
            close, upgrading = b"close" in tokens, b"upgrade" in tokens
        if not upgrading:
            upgrade = None
    return _tuple_new(
        RequestHeaders, (forward, host, length, chunked, upgrade, expect, close, proxy_auth)
    )


def classify_response(raw: Headers) -> ResponseHeaders:
    """Split a response's headers into what is forwarded and its framing."""
    forward: Headers = []
    length: int | None = None
    length_header: tuple[bytes, bytes] | None = None
    chunked = False
    connection: list[bytes] = []
    upgrade: bytes | None = None
    for header in raw:
        try:
            kind = _kind_cache[header[0]]
        except KeyError:
            kind = header_kind(header[0])
        if kind == PLAIN:
            forward.append(header)
        elif kind == LENGTH:
            value = header[1]
            if length is None and value.isdigit():  # the usual case: one plain number
                length = int(value)
            else:
                length = _content_length(value, length)
            if length_header is None:
                # Kept as received (one copy): forwarding it unchanged saves a format.
                length_header = header
                forward.append(header)
        elif kind == CONNECTION:
            connection.append(header[1])
        elif kind == TRANSFER:
            chunked = header[1].strip().lower().endswith(b"chunked")
        elif kind == UPGRADE:
            upgrade = header[1].strip()
        elif kind in (HOST, EXPECT):
            forward.append(header)  # request-only fields: end-to-end in a response
    close = False
    if connection:
        simple = _simple_connection(connection)
        if simple is not None:
            close = simple[0]
        else:
            forward, tokens = _strip_listed(forward, connection)
            close = b"close" in tokens
    if chunked and length_header is not None:
        # RFC 9112 §6.3: Transfer-Encoding overrides Content-Length.
        length = None
        forward.remove(length_header)
    return _tuple_new(ResponseHeaders, (forward, length, chunked, close, upgrade))


_COLON = b": ".join
_CRLF = b"\r\n".join


def serialize(first_line: bytes, headers: Headers, extra: bytes = b"") -> bytes:
    """The head: first line (with CRLF), headers, ``extra`` (pre-encoded lines), blank line."""
    if not headers:
        return first_line + extra + b"\r\n"
    # map() over bytes.join keeps the per-header work in C: 4 list appends per header in
    # Python cost ~1.5 µs per request more (bench/hotpath.py).
    return b"".join((first_line, _CRLF(map(_COLON, headers)), b"\r\n", extra, b"\r\n"))


def request_head(
    method: bytes, path: bytes, host: bytes, headers: Headers, extra: bytes = b""
) -> bytes:
    """An HTTP/1.1 request head: request line, Host, ``headers``, ``extra``, blank line."""
    # One join instead of a %-format plus serialize()'s join (-10 % instructions, callgrind).
    if not headers:
        return b"".join((method, b" ", path, b" HTTP/1.1\r\nHost: ", host, b"\r\n", extra, b"\r\n"))
    return b"".join(
        (
            method,
            b" ",
            path,
            b" HTTP/1.1\r\nHost: ",
            host,
            b"\r\n",
            _CRLF(map(_COLON, headers)),
            b"\r\n",
            extra,
            b"\r\n",
        )
    )


def encode_chunk(data: bytes) -> bytes:
    """One chunk of the chunked transfer coding (RFC 9112 §7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def last_chunk(trailers: Headers | None) -> bytes:
    """The last chunk with optional trailer fields (RFC 9112 §7.1.2)."""
    if not trailers:
        return b"0\r\n\r\n"
    return serialize(b"0\r\n", trailers)


def manipulate(
    headers: Headers, add: list[tuple[bytes, bytes, bool]], remove: frozenset[bytes]
) -> Headers:
    """Gloo headerManipulation: remove by name, then add (append, or replace every value
    of that name). Returns a new list; ``headers`` is left alone."""
    out = [(n, v) for n, v in headers if n.lower() not in remove] if remove else list(headers)
    for name, value, append in add:
        if not append:
            lname = name.lower()
            out = [(n, v) for n, v in out if n.lower() != lname]
        out.append((name, value))
    return out
