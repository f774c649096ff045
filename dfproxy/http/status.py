"""Status lines, precomputed once: building them per response costs a format per request."""

from __future__ import annotations

from http import HTTPStatus

REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus}


def _line(code: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (code, REASONS.get(code, b"Unknown"))


# uvicorn keeps the same table; a dict lookup beats b"%d" formatting on every response.
STATUS_LINES: dict[int, bytes] = {code: _line(code) for code in range(100, 600)}


def status_line(code: int, reason: bytes | None = None) -> bytes:
    """The HTTP/1.1 status line for ``code``; the origin's own reason phrase if given."""
    if reason:
        return b"HTTP/1.1 %d %s\r\n" % (code, reason)
    return STATUS_LINES.get(code) or _line(code)
