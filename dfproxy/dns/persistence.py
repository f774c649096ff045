"""Persist the DNS cache to a file so a restart starts warm (Envoy ``key_value_config``).

File format, Envoy's ``KeyValueStoreBase`` (reference §3.5): repeated
``<len(key)>\\n<key><len(value)>\\n<value>``. Key: the normalised ``host:port``. Value: one line
per address, ``<ip:port>|<ttl_seconds>|<seconds_since_epoch>``, joined by ``\\n``.
At start-up each entry is loaded as resolved (stat ``cache_load``); a malformed file stops
the load where it breaks (Envoy aborts the load) and the rest is resolved on demand.
Writes go to a temporary file renamed into place, off the event loop thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass

from dfproxy.dns.cache import DnsCache
from dfproxy.http.authority import AuthorityError, split_host_port

log = logging.getLogger("dfproxy.dns_cache")


@dataclass(frozen=True)
class StoreConfig:
    filename: str
    flush_interval: float = 60.0
    max_entries: int = 1000  # 0: unlimited (Envoy's default is 1000)


def encode(entries: list[tuple[str, str]]) -> bytes:
    """Envoy's length-prefixed key/value encoding."""
    out = []
    for key, value in entries:
        k, v = key.encode(), value.encode()
        out.append(b"%d\n%b%d\n%b" % (len(k), k, len(v), v))
    return b"".join(out)


def decode(data: bytes) -> list[tuple[str, str]]:
    """Parse the encoding; stops at the first malformed entry (what came before is kept)."""
    entries: list[tuple[str, str]] = []
    pos = 0
    while pos < len(data):
        try:
            key, pos = _field(data, pos)
            value, pos = _field(data, pos)
        except ValueError as exc:
            log.warning("DNS cache file is malformed at byte %d (%s); load stopped", pos, exc)
            break
        entries.append((key, value))
    return entries


def _field(data: bytes, pos: int) -> tuple[str, int]:
    nl = data.find(b"\n", pos)
    if nl < 0:
        raise ValueError("missing length")
    length = int(data[pos:nl])
    end = nl + 1 + length
    if length < 0 or end > len(data):
        raise ValueError("truncated entry")
    return data[nl + 1 : end].decode(), end


def entry_value(addresses: list[tuple[str, int]], port: int, ttl: int) -> str:
    now = int(time.time())
    lines = []
    for ip, _family in addresses:
        host = f"[{ip}]" if ":" in ip else ip
        lines.append(f"{host}:{port}|{ttl}|{now}")
    return "\n".join(lines)


def parse_value(value: str) -> tuple[list[tuple[str, int]], int]:
    """Addresses and the TTL from a stored value. Raises ValueError."""
    addresses: list[tuple[str, int]] = []
    ttl = 0
    for line in value.split("\n"):
        addr, ttl_text, _stamp = line.split("|")
        try:
            ip, _port = split_host_port(addr)
        except AuthorityError as exc:
            raise ValueError(str(exc)) from None
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        addresses.append((ip, int(family)))
        ttl = int(ttl_text)
    return addresses, ttl


class CacheStore:
    """Loads a DnsCache from a file at start-up and flushes it back periodically."""

    def __init__(self, cache: DnsCache, config: StoreConfig, loop: asyncio.AbstractEventLoop):
        self.cache = cache
        self.config = config
        self.loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._writing = False

    def load(self) -> int:
        """Seed the cache from the file; returns how many hosts were loaded."""
        try:
            with open(self.config.filename, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning("cannot read DNS cache file %s: %s", self.config.filename, exc)
            return 0
        loaded = 0
        for key, value in decode(data):
            try:
                host, port = split_host_port(key)
                addresses, ttl = parse_value(value)
            except (ValueError, AuthorityError) as exc:
                log.warning("bad DNS cache entry %r: %s; load stopped", key, exc)
                break
            if port is None or not addresses:
                continue
            before = self.cache.st_cache_load.value
            self.cache.load_from_store(key, host.lower(), port, addresses, ttl)
            loaded += self.cache.st_cache_load.value - before
        log.info("loaded %d hosts from %s", loaded, self.config.filename)
        return loaded

    def start(self) -> None:
        self._timer = self.loop.call_later(self.config.flush_interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self.loop.call_later(self.config.flush_interval, self._on_timer)
        self.flush_soon()

    def snapshot(self) -> bytes:
        entries = []
        limit = self.config.max_entries or None
        for info in self.cache.hosts.values():
            if info.addresses:
                entries.append((info.key, entry_value(info.addresses, info.port, info.ttl)))
                if limit is not None and len(entries) >= limit:
                    break
        return encode(entries)

    def flush_soon(self) -> None:
        """Write the current cache in a thread (the loop never waits on the disk)."""
        if self._writing:
            return
        self._writing = True
        data = self.snapshot()
        fut = self.loop.run_in_executor(None, write_atomically, self.config.filename, data)
        fut.add_done_callback(self._written)

    def _written(self, fut: asyncio.Future[None]) -> None:
        self._writing = False
        exc = fut.exception()
        if exc is not None:
            log.warning("cannot write DNS cache file %s: %s", self.config.filename, exc)

    def close(self) -> None:
        """Stop the timer and write a last time, synchronously (shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            write_atomically(self.config.filename, self.snapshot())
        except OSError as exc:
            log.warning("cannot write DNS cache file %s: %s", self.config.filename, exc)


def write_atomically(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
