"""Failed authentication attempts per client address, in a fixed window.

After ``max_failures`` failures from one address, that address is refused without a check
until ``window`` seconds after its first failure: a password-guessing client gets a cheap
answer, and bcrypt (milliseconds per check) cannot be used to load the proxy. The table holds
at most ``max_tracked`` addresses; when full, the one whose window began first is forgotten.
"""

from __future__ import annotations


class FailureLimiter:
    __slots__ = ("max_failures", "window", "max_tracked", "_table")

    def __init__(self, max_failures: int, window: float, max_tracked: int) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_tracked = max_tracked
        # address -> [window start, failures]; insertion order is window-start order.
        self._table: dict[str, list[float]] = {}

    def __len__(self) -> int:
        return len(self._table)

    def configure(self, max_failures: int, window: float, max_tracked: int) -> None:
        """New limits (a config reload), keeping what is tracked."""
        self.max_failures, self.window, self.max_tracked = max_failures, window, max_tracked

    def blocked_for(self, address: str, now: float) -> float:
        """Seconds until ``address`` may try again (0.0: it may try now)."""
        entry = self._table.get(address)
        if entry is None:
            return 0.0
        end = entry[0] + self.window
        if end <= now:
            del self._table[address]
            return 0.0
        return end - now if entry[1] >= self.max_failures else 0.0

    def record_failure(self, address: str, now: float) -> None:
        table = self._table
        entry = table.get(address)
        if entry is not None and entry[0] + self.window > now:
            entry[1] += 1
            return
        if entry is not None:
            del table[address]
        while len(table) >= self.max_tracked:
            del table[next(iter(table))]
        table[address] = [now, 1.0]


def client_address(peer: str) -> str:
    """The address part of ``host:port`` / ``[v6]:port`` (the connection's peer, after the
    PROXY protocol when the listener uses it)."""
    host, sep, _ = peer.rpartition(":")
    if not sep:
        return peer
    return host[1:-1] if host.startswith("[") else host
