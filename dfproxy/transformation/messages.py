"""The request and the response as transformation templates read and change them.

Templates name headers as lower-case ``str``; these adapters map them onto the Stream's
header lists (bytes), pseudo-headers included: ``:path``, ``:method``, ``:authority`` and
``:scheme`` of the request, ``:status`` of the response. Values are UTF-8 with
surrogateescape, so any byte survives a round trip.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dfproxy.http.authority import AuthorityError, parse_authority
from dfproxy.transformation.values import RenderError

if TYPE_CHECKING:
    from dfproxy.stream import Stream


def _text(value: bytes | None) -> str:
    return "" if value is None else value.decode("utf-8", "surrogateescape")


class RequestMessage:
    """The request as header(), set and remove see it, pseudo-headers included."""

    __slots__ = ("stream",)

    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    def get(self, name: str) -> str:
        s = self.stream
        if name[:1] == ":":
            if name == ":path":
                return _text(s.path)
            if name == ":method":
                return _text(s.method)
            if name == ":authority":
                return _text(s.host_header)
            if name == ":scheme":
                return "https" if s.https_target else "http"
            return ""
        return _text(s.request_header(name.encode("latin-1")))

    request_get = get

    def set(self, name: str, value: str) -> None:
        s = self.stream
        raw = value.encode("utf-8", "surrogateescape")
        if name == ":path":
            s.path = raw
        elif name == ":method":
            s.method = raw
        elif name in (":authority", "host"):
            try:
                s.authority = parse_authority(raw.decode("latin-1").strip(), 80)
            except AuthorityError as exc:
                raise RenderError(f"invalid {name} {value!r}: {exc}") from None
            s.set_request_header(b"host", raw)
        elif name[:1] != ":":
            s.set_request_header(name.encode("latin-1"), raw)

    def append(self, name: str, value: str) -> None:
        if name[:1] == ":" or name == "host":
            self.set(name, value)
        else:
            raw = value.encode("utf-8", "surrogateescape")
            self.stream.set_request_header(name.encode("latin-1"), raw, append=True)

    def remove(self, name: str) -> None:
        if name[:1] != ":" and name != "host":
            self.stream.remove_request_header(name.encode("latin-1"))


class ResponseMessage:
    """The response head as the filter holds it (``:status`` is the status code)."""

    __slots__ = ("stream", "request")

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.request = RequestMessage(stream)

    def get_all(self, name: str) -> str | None:
        s = self.stream
        if name == ":status":
            return str(s.resp_status)
        key = name.encode("latin-1")
        values = [v for n, v in s.resp_headers or () if n.lower() == key]
        return b",".join(values).decode("utf-8", "surrogateescape") if values else None

    def get(self, name: str) -> str:
        s = self.stream
        if name == ":status":
            return str(s.resp_status)
        key = name.encode("latin-1")
        for n, v in s.resp_headers or ():
            if n.lower() == key:
                return _text(v)
        return ""

    def request_get(self, name: str) -> str:
        return self.request.get(name)

    def set(self, name: str, value: str) -> None:
        if name == ":status":
            if not (value.isdigit() and 100 <= int(value) <= 599):
                raise RenderError(f"invalid :status {value!r}")
            self.stream.resp_status = int(value)
            return
        if name[:1] == ":":
            return
        self.remove(name)
        self.append(name, value)

    def append(self, name: str, value: str) -> None:
        if name[:1] == ":":
            self.set(name, value)
            return
        headers = list(self.stream.resp_headers or ())
        headers.append((name.encode("latin-1"), value.encode("utf-8", "surrogateescape")))
        self.stream.resp_headers = headers

    def remove(self, name: str) -> None:
        key = name.encode("latin-1")
        s = self.stream
        s.resp_headers = [(n, v) for n, v in s.resp_headers or () if n.lower() != key]
