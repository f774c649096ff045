"""Backpressure between two transports: pause reading one side while the other cannot write.

uvicorn's FlowControl keeps the same shape. A transport's reading is paused for possibly
several reasons at once (the peer's write buffer is full, a pipelined request is queued, a
request body is buffered before the upstream is ready); it resumes only when none is left.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Final

# Per-transport write buffer limits: Envoy's per_connection_buffer_limit_bytes default, 1 MiB
# (asyncio's default high-water mark is 64 KiB). CONNECT bulk through the proxy measured 0.90-0.93x
# direct with 256/64 KiB and 0.92-0.99x with 1 MiB/256 KiB (bench/run.py --only connect-bulk
# --big-mib 2048, three runs each).
HIGH_WATER: Final = 1024 * 1024
LOW_WATER: Final = 256 * 1024

# Reasons to stop reading a transport (bit flags).
PEER_BACKPRESSURE: Final = 1
PIPELINE_QUEUE: Final = 2
BODY_BUFFER: Final = 4


def set_nodelay(transport: asyncio.Transport) -> None:
    """Disable Nagle: a proxy's small writes must not wait for the peer's delayed ACK."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class FlowControl:
    """Tracks why ``transport``'s reading is paused."""

    __slots__ = ("transport", "reasons")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.reasons = 0
        transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)

    def pause(self, reason: int) -> None:
        if not self.reasons and not self.transport.is_closing():
            self.transport.pause_reading()
        self.reasons |= reason

    def resume(self, reason: int) -> None:
        if self.reasons & reason:
            self.reasons &= ~reason
            if not self.reasons and not self.transport.is_closing():
                self.transport.resume_reading()
