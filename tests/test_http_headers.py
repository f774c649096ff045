"""Unit tests for dfproxy.http.headers: hop-by-hop removal, framing, serialisation."""

from __future__ import annotations

import pytest

from dfproxy.http.headers import (
    HOP_BY_HOP,
    HeaderError,
    Headers,
    classify_request,
    classify_response,
    encode_chunk,
    last_chunk,
    serialize,
)

HOP_NAMES = [
    b"Connection",
    b"Keep-Alive",
    b"Proxy-Connection",
    b"TE",
    b"Trailer",
    b"Transfer-Encoding",
    b"Upgrade",
    b"Proxy-Authorization",
    b"Proxy-Authenticate",
]


def names(headers: Headers) -> list[bytes]:
    return [n.lower() for n, _ in headers]


def without_length(headers: Headers) -> Headers:
    """``forward`` minus Content-Length: whether the proxy re-emits the received
    Content-Length line or formats its own is an implementation choice."""
    return [(n, v) for n, v in headers if n.lower() != b"content-length"]


# ---------------------------------------------------------------------------- hop-by-hop
def test_hop_by_hop_set_is_complete() -> None:
    assert {n.lower() for n in HOP_NAMES} <= HOP_BY_HOP


@pytest.mark.parametrize("name", HOP_NAMES)
def test_request_hop_by_hop_removed(name: bytes) -> None:
    value = b"chunked" if name == b"Transfer-Encoding" else b"x"
    raw = [(b"Host", b"h"), (name, value), (b"Accept", b"*/*")]
    r = classify_request(raw)
    assert r.forward == [(b"Accept", b"*/*")]


@pytest.mark.parametrize("name", HOP_NAMES)
def test_response_hop_by_hop_removed(name: bytes) -> None:
    value = b"chunked" if name == b"Transfer-Encoding" else b"x"
    raw = [(b"Content-Type", b"text/plain"), (name, value), (b"X-Ok", b"1")]
    r = classify_response(raw)
    assert r.forward == [(b"Content-Type", b"text/plain"), (b"X-Ok", b"1")]


def test_request_all_hop_by_hop_at_once_case_insensitive() -> None:
    raw = [
        (b"host", b"example.com"),
        (b"CONNECTION", b"keep-alive, X-Custom, x-other"),
        (b"x-custom", b"secret"),
        (b"X-OTHER", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"proxy-connection", b"keep-alive"),
        (b"te", b"trailers"),
        (b"trailer", b"x-checksum"),
        (b"proxy-authorization", b"Basic Zm9vOmJhcg=="),
        (b"proxy-authenticate", b"Basic"),
        (b"X-Keep", b"yes"),
        (b"user-agent", b"t"),
    ]
    r = classify_request(raw)
    assert r.forward == [(b"X-Keep", b"yes"), (b"user-agent", b"t")]
    assert r.host == b"example.com"
    assert not r.close


def test_request_connection_listed_headers_removed_across_several_connection_headers() -> None:
    raw = [
        (b"Connection", b"x-a"),
        (b"Connection", b" X-B ,, "),
        (b"X-A", b"1"),
        (b"x-b", b"2"),
        (b"X-C", b"3"),
    ]
    assert classify_request(raw).forward == [(b"X-C", b"3")]


def test_request_connection_close_detected() -> None:
    assert classify_request([(b"Connection", b"Close")]).close
    assert classify_request([(b"Connection", b"keep-alive, close")]).close
    assert not classify_request([(b"Connection", b"keep-alive")]).close
    assert not classify_request([]).close


def test_request_end_to_end_headers_kept_in_order_with_original_case() -> None:
    raw = [
        (b"X-First", b"1"),
        (b"Host", b"h"),
        (b"accept", b"a"),
        (b"X-First", b"2"),
        (b"Cookie", b"c=1"),
    ]
    assert classify_request(raw).forward == [
        (b"X-First", b"1"),
        (b"accept", b"a"),
        (b"X-First", b"2"),
        (b"Cookie", b"c=1"),
    ]


def test_response_connection_listed_headers_removed() -> None:
    raw = [
        (b"Connection", b"X-Secret, close"),
        (b"X-Secret", b"s"),
        (b"Content-Length", b"3"),
        (b"X-Public", b"p"),
    ]
    r = classify_response(raw)
    assert without_length(r.forward) == [(b"X-Public", b"p")]
    assert r.close
    assert r.content_length == 3


# ---------------------------------------------------------------------------- Host
def test_host_extracted_and_not_forwarded() -> None:
    r = classify_request([(b"Host", b"  example.com:8080 "), (b"A", b"b")])
    assert r.host == b"example.com:8080"
    assert r.forward == [(b"A", b"b")]


def test_host_absent() -> None:
    assert classify_request([(b"A", b"b")]).host is None


def test_empty_host_is_empty_bytes() -> None:
    assert classify_request([(b"Host", b"")]).host == b""


def test_multiple_host_headers_rejected() -> None:
    """RFC 9112 §3.2: a request with more than one Host field must be answered 400."""
    with pytest.raises(HeaderError):
        classify_request([(b"Host", b"a"), (b"Host", b"a")])
    with pytest.raises(HeaderError):
        classify_request([(b"Host", b"a"), (b"host", b"b")])


# ---------------------------------------------------------------------------- Content-Length
def test_content_length_extracted() -> None:
    r = classify_request([(b"Content-Length", b"42"), (b"X", b"y")])
    assert r.content_length == 42
    assert without_length(r.forward) == [(b"X", b"y")]
    assert not r.chunked


def test_duplicate_content_length_forwarded_at_most_once() -> None:
    for classify in (classify_request, classify_response):
        r = classify([(b"Content-Length", b"5"), (b"X", b"y"), (b"content-length", b"5")])
        assert r.content_length == 5
        assert [v for n, v in r.forward if n.lower() == b"content-length"] in ([], [b"5"])


def test_content_length_zero() -> None:
    assert classify_request([(b"Content-Length", b"0")]).content_length == 0


def test_content_length_absent() -> None:
    assert classify_request([]).content_length is None


def test_duplicate_identical_content_length_headers_collapse() -> None:
    """RFC 9110 §8.6: identical duplicates may be collapsed to one value."""
    r = classify_request([(b"Content-Length", b"5"), (b"Content-Length", b"5")])
    assert r.content_length == 5


def test_identical_content_length_list_collapses() -> None:
    assert classify_request([(b"Content-Length", b"7, 7,7")]).content_length == 7


@pytest.mark.parametrize(
    "raw",
    [
        [(b"Content-Length", b"5"), (b"Content-Length", b"6")],
        [(b"Content-Length", b"5, 6")],
        [(b"Content-Length", b"5"), (b"content-length", b"5, 6")],
    ],
)
def test_conflicting_content_length_rejected(raw: Headers) -> None:
    with pytest.raises(HeaderError):
        classify_request(raw)
    with pytest.raises(HeaderError):
        classify_response(raw)


@pytest.mark.parametrize("value", [b"", b"abc", b"-1", b"1.5", b"0x10", b" , "])
def test_invalid_content_length_rejected(value: bytes) -> None:
    with pytest.raises(HeaderError):
        classify_request([(b"Content-Length", value)])
    with pytest.raises(HeaderError):
        classify_response([(b"Content-Length", value)])


def test_header_error_is_value_error() -> None:
    assert issubclass(HeaderError, ValueError)


# ---------------------------------------------------------------------------- Transfer-Encoding
def test_request_chunked() -> None:
    r = classify_request([(b"Transfer-Encoding", b"chunked")])
    assert r.chunked
    assert r.forward == []
    assert classify_request([(b"transfer-encoding", b"gzip, Chunked")]).chunked


def test_request_not_chunked_when_chunked_is_not_last() -> None:
    assert not classify_request([(b"Transfer-Encoding", b"chunked, gzip")]).chunked


# ---------------------------------------------------------------------------- Expect
@pytest.mark.parametrize("value", [b"100-continue", b"100-Continue", b" 100-CONTINUE "])
def test_expect_100_continue_consumed(value: bytes) -> None:
    r = classify_request([(b"Expect", value), (b"X", b"y")])
    assert r.expect_continue
    assert r.forward == [(b"X", b"y")]


def test_other_expect_forwarded() -> None:
    r = classify_request([(b"Expect", b"something-else")])
    assert not r.expect_continue
    assert r.forward == [(b"Expect", b"something-else")]


def test_no_expect() -> None:
    assert not classify_request([]).expect_continue


# ---------------------------------------------------------------------------- Upgrade
def test_upgrade_requires_connection_upgrade() -> None:
    r = classify_request([(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")])
    assert r.upgrade == b"websocket"
    assert r.forward == []
    # An Upgrade header that Connection does not name is not an upgrade request.
    assert classify_request([(b"Upgrade", b"websocket")]).upgrade is None
    assert classify_request([(b"Connection", b"close"), (b"Upgrade", b"h2c")]).upgrade is None


def test_response_upgrade_token() -> None:
    r = classify_response([(b"Connection", b"upgrade"), (b"Upgrade", b"websocket")])
    assert r.upgrade == b"websocket"
    assert r.forward == []


# ---------------------------------------------------------------------------- response framing
def test_response_content_length() -> None:
    r = classify_response([(b"Content-Length", b"10")])
    assert (r.content_length, r.chunked, r.close) == (10, False, False)


def test_response_chunked() -> None:
    r = classify_response([(b"Transfer-Encoding", b"chunked")])
    assert (r.content_length, r.chunked) == (None, True)


def test_response_chunked_overrides_content_length() -> None:
    """RFC 9112 §6.3: Transfer-Encoding overrides Content-Length."""
    r = classify_response([(b"Content-Length", b"100"), (b"Transfer-Encoding", b"chunked")])
    assert r.chunked
    assert r.content_length is None
    r = classify_response([(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"100")])
    assert r.chunked
    assert r.content_length is None
    assert r.forward == []


def test_response_close_delimited() -> None:
    r = classify_response([(b"Connection", b"close"), (b"Content-Type", b"a/b")])
    assert (r.content_length, r.chunked, r.close) == (None, False, True)
    assert r.forward == [(b"Content-Type", b"a/b")]


def test_response_keeps_end_to_end_headers() -> None:
    raw = [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2"), (b"Date", b"x")]
    assert classify_response(raw).forward == raw


# ---------------------------------------------------------------------------- serialisation
def test_serialize() -> None:
    head = serialize(b"GET /p HTTP/1.1\r\n", [(b"Host", b"h"), (b"X-A", b"1")])
    assert head == b"GET /p HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n"


def test_serialize_with_extra_lines() -> None:
    head = serialize(b"HTTP/1.1 200 OK\r\n", [(b"A", b"b")], b"content-length: 3\r\n")
    assert head == b"HTTP/1.1 200 OK\r\nA: b\r\ncontent-length: 3\r\n\r\n"


def test_serialize_no_headers() -> None:
    assert serialize(b"HTTP/1.1 204 No Content\r\n", []) == b"HTTP/1.1 204 No Content\r\n\r\n"


@pytest.mark.parametrize(
    ("data", "wire"),
    [
        (b"hello", b"5\r\nhello\r\n"),
        (b"x" * 16, b"10\r\n" + b"x" * 16 + b"\r\n"),
        (b"\r\n", b"2\r\n\r\n\r\n"),
        (b"y" * 0x1234, b"1234\r\n" + b"y" * 0x1234 + b"\r\n"),
    ],
)
def test_encode_chunk(data: bytes, wire: bytes) -> None:
    assert encode_chunk(data) == wire


def test_last_chunk_without_trailers() -> None:
    assert last_chunk(None) == b"0\r\n\r\n"
    assert last_chunk([]) == b"0\r\n\r\n"


def test_last_chunk_with_trailers() -> None:
    wire = last_chunk([(b"x-checksum", b"abc"), (b"X-Other", b"1")])
    assert wire == b"0\r\nx-checksum: abc\r\nX-Other: 1\r\n\r\n"


def test_chunked_encoding_round_trip_with_httptools() -> None:
    """What encode_chunk/last_chunk produce parses back to the same body and trailers."""
    import httptools

    class Sink:
        def __init__(self) -> None:
            self.body = b""
            self.headers: list[tuple[bytes, bytes]] = []
            self.done = False

        def on_body(self, b: bytes) -> None:
            self.body += b

        def on_header(self, n: bytes, v: bytes) -> None:
            self.headers.append((n, v))

        def on_message_complete(self) -> None:
            self.done = True

    sink = Sink()
    parser = httptools.HttpResponseParser(sink)
    head = serialize(b"HTTP/1.1 200 OK\r\n", [], b"transfer-encoding: chunked\r\n")
    parser.feed_data(
        head + encode_chunk(b"abc") + encode_chunk(b"defgh") + last_chunk([(b"x-checksum", b"123")])
    )
    assert sink.done
    assert sink.body == b"abcdefgh"
    assert (b"x-checksum", b"123") in sink.headers


@pytest.mark.parametrize("value", [b"+5", b"1_0", b"\xd9\xa5"])
def test_content_length_accepts_only_ascii_digits(value: bytes) -> None:
    """RFC 9110 §8.6: ``Content-Length = 1*DIGIT``. Python's ``int()`` also accepts a sign
    and ``_`` separators, so ``+5`` and ``1_0`` must be refused explicitly (llhttp refuses
    them first today; the pure function documents that it raises on invalid values)."""
    with pytest.raises(HeaderError):
        classify_request([(b"Content-Length", value)])
    with pytest.raises(HeaderError):
        classify_response([(b"Content-Length", value)])
