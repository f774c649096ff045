"""Open a TCP connection to one of several addresses with Happy Eyeballs (RFC 8305).

RFC 8305 §5: start with the first address; if it has not connected after the "connection
attempt delay" (Envoy: 300 ms), start the next one while the first keeps trying; a failure
starts the next attempt at once. The first attempt to connect wins and the others are
cancelled (and closed if they connected meanwhile). Envoy does the same for
``dns_lookup_family: ALL`` (reference §3.2).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

P = TypeVar("P", bound=asyncio.BaseProtocol)

ATTEMPT_DELAY = 0.3


async def happy_eyeballs_connect(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], P],
    addresses: Sequence[str],
    port: int,
    delay: float = ATTEMPT_DELAY,
    **kwargs: Any,
) -> tuple[asyncio.Transport, P]:
    """Connect to the first address that answers; raise the last OSError if none does.

    ``kwargs`` go to create_connection (TLS: ssl, server_hostname, ssl_handshake_timeout);
    a TLS handshake is part of an attempt, so a failed verification fails that attempt."""
    if len(addresses) == 1:
        transport, protocol = await loop.create_connection(factory, addresses[0], port, **kwargs)
        return transport, protocol
    pending: set[asyncio.Future[tuple[asyncio.Transport, P]]] = set()
    last_error: BaseException | None = None
    next_index = 0
    winner: tuple[asyncio.Transport, P] | None = None
    try:
        while winner is None:
            if next_index < len(addresses):
                pending.add(
                    loop.create_task(  # awaited below, never detached
                        loop.create_connection(factory, addresses[next_index], port, **kwargs)
                    )
                )
                next_index += 1
            if not pending:
                break
            timeout = delay if next_index < len(addresses) else None
            done, pending = await asyncio.wait(
                pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for fut in done:
                exc = fut.exception()
                if exc is None and winner is None:
                    winner = fut.result()
                elif exc is None:
                    fut.result()[0].close()
                else:
                    last_error = exc
    finally:
        for fut in pending:
            fut.cancel()
        if pending:
            done, _ = await asyncio.wait(pending)
            for fut in done:
                if not fut.cancelled() and fut.exception() is None:
                    fut.result()[0].close()
    if winner is None:
        if isinstance(last_error, OSError):
            raise last_error
        raise OSError("no address to connect to") from last_error
    return winner
