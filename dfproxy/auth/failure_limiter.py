"""Failed authentication attempts per client address, in a fixed window.

After ``max_failures`` failures from one address, that address is refused without a check
until ``window`` seconds after its first failure: a password-guessing client gets a cheap
answer, and bcrypt (milliseconds per check) cannot be used to load the proxy. The table holds
at most ``max_tracked`` addresses; when full, the one whose window began first is forgotten.

A failure is only known when its check ends, so checks still running count against the limit
too (``may_check``): guesses sent all at once, one per connection, would otherwise all be
checked before the first failure counted.
"""

from __future__ import annotations


class FailureLimiter:
    __slots__ = ("max_failures", "window", "max_tracked", "_table", "_checking")

    def __init__(self, max_failures: int, window: float, max_tracked: int) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_tracked = max_tracked
        # address -> [window start, failures]; insertion order is window-start order.
        self._table: dict[str, list[float]] = {}
        # address -> checks running for it (bounded by the caller's pending-check limit).
        self._checking: dict[str, int] = {}

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

    def may_check(self, address: str, now: float) -> bool:
        """Whether one more check may start for ``address``: its failures in the window
        plus its checks still running stay under ``max_failures``."""
        entry = self._table.get(address)
        failures = entry[1] if entry is not None and entry[0] + self.window > now else 0.0
        return failures + self._checking.get(address, 0) < self.max_failures

    def check_started(self, address: str) -> None:
        self._checking[address] = self._checking.get(address, 0) + 1

    def check_ended(self, address: str) -> None:
        left = self._checking.get(address, 0) - 1
        if left > 0:
            self._checking[address] = left
        else:
            self._checking.pop(address, None)

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
