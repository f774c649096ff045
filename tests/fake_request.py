"""A request object with the Stream methods the JWT code uses (no sockets)."""

from __future__ import annotations

from typing import Any


class FakeRequest:
    def __init__(self, headers: list[tuple[str, str]] | None = None, path: str = "/") -> None:
        self.forward = [(n.encode(), v.encode()) for n, v in headers or []]
        self.path = path.encode()
        self.host_header = b"app.test"
        self.method = b"GET"
        self.target = self.path
        self.state = 1  # FILTERING
        self.details = ""
        self.filter_state: dict[str, Any] | None = None
        self.replies: list[tuple[int, bytes, list[tuple[bytes, bytes]]]] = []

    def request_header_joined(self, lname: bytes) -> bytes | None:
        values = [v for n, v in self.forward if n.lower() == lname]
        return b",".join(values) if values else None

    def remove_request_header(self, lname: bytes) -> None:
        self.forward = [(n, v) for n, v in self.forward if n.lower() != lname]

    def set_request_header(self, lname: bytes, value: bytes, append: bool = False) -> None:
        if not append:
            self.remove_request_header(lname)
        self.forward.append((lname, value))

    def state_dict(self) -> dict[str, Any]:
        if self.filter_state is None:
            self.filter_state = {}
        return self.filter_state

    def send_local_reply(
        self, status: int, body: bytes, *, extra_headers: list[tuple[bytes, bytes]]
    ) -> None:
        self.replies.append((status, body, extra_headers))
        self.state = 6

    def headers(self, name: str) -> list[str]:
        return [v.decode() for n, v in self.forward if n.decode().lower() == name]
