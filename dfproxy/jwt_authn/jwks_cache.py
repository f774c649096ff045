"""A remote JWKS (Gloo ``jwks.remote``): fetched through a DFP cluster with the proxy's own
client, kept for ``cacheDuration``, refreshed in the background.

States (``keys`` x ``task``):
    EMPTY      no keys, no fetch: the next request that needs keys starts one (unless the
               last attempt failed less than FAILED_REFETCH_INTERVAL ago: then it fails at
               once with "Jwks remote fetch is failed" instead of hammering the server)
    FETCHING   a fetch is in flight; requests without keys wait for it (bounded by the
               client's time limit); with keys they go on with the old ones
    READY      keys; once older than ``cacheDuration`` the next use starts a refresh
Rules: a failed fetch never drops keys that worked (stale keys beat refusing everybody);
waiters are told once, after the fetch ended either way. With ``asyncFetch`` the keys are
fetched at start-up and refreshed on a timer (Envoy's ``JwksAsyncFetcher``), but only while
someone used or configured them within two cache periods, so a JWKS no config uses any
more goes quiet (also while its server is down: a reload keeps it in ``runtime.shared``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from dfproxy import tasks
from dfproxy.jwt_authn.keys import MAX_JWKS_BYTES, Key, parse_key_text
from dfproxy.jwt_authn.status import JwksError
from dfproxy.upstream.client import ClientError, fetch

if TYPE_CHECKING:
    from dfproxy.cluster import DfpCluster
    from dfproxy.stats import StatsStore

log = logging.getLogger("dfproxy.jwt")

FAILED_REFETCH_INTERVAL = 1.0  # Envoy async_fetch failed_refetch_duration default
FETCH_TIME_LIMIT = 5.0
IDLE_PERIODS = 2  # asyncFetch refreshes stop after this many unused cache periods

ClusterFor = Callable[[], "DfpCluster | None"]


class RemoteJwks:
    """The keys of one JWKS URL, shared by every route (and kept across reloads)."""

    def __init__(self, url: str, loop: asyncio.AbstractEventLoop, stats: StatsStore, prefix: str):
        self.url = url
        self.loop = loop
        self.cache_duration = 300.0
        self.async_fetch = False
        self.fast_listener = False
        self.cluster_for: ClusterFor = lambda: None
        self.owner: object = None  # the Runtime that configured it last
        self.keys: tuple[Key, ...] | None = None
        self.fetched_at = 0.0
        self.failed_at = -FAILED_REFETCH_INTERVAL
        self.last_used = time.monotonic()  # by a request, or configured by a (re)load
        self.last_error = ""
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.waiters: list[Callable[[], None]] = []
        self.closed = False
        self.st_success = stats.counter(prefix + "jwks_fetch_success")
        self.st_failed = stats.counter(prefix + "jwks_fetch_failed")

    def configure(
        self,
        owner: object,
        cache_duration: float,
        async_fetch: bool,
        fast_listener: bool,
        cluster_for: ClusterFor,
    ) -> None:
        """Apply one route's settings. Routes of the same config sharing the URL get the
        shortest cache duration; a new config (another ``owner``) starts afresh."""
        if owner is not self.owner:
            self.owner = owner
            self.cache_duration = cache_duration
            self.async_fetch = async_fetch
            self.fast_listener = fast_listener
        else:
            self.cache_duration = min(self.cache_duration, cache_duration)
            self.async_fetch = self.async_fetch or async_fetch
            self.fast_listener = self.fast_listener and fast_listener
        self.cluster_for = cluster_for
        self.last_used = time.monotonic()
        if self.async_fetch and self.timer is None and self.task is None:
            # The loop may not run yet (start-up): fetch as soon as it does.
            self.timer = self.loop.call_later(0, self._on_timer)

    # -- what requests use ---------------------------------------------------------------------

    def current(self) -> tuple[Key, ...] | None:
        """The keys to verify with (possibly stale while a refresh runs), or None."""
        now = time.monotonic()
        self.last_used = now
        keys = self.keys
        if (
            keys is not None
            and now - self.fetched_at >= self.cache_duration
            and self.task is None
            and now - self.failed_at >= FAILED_REFETCH_INTERVAL
        ):
            self._start()
        return keys

    def join(self) -> bool:
        """No keys: make sure a fetch runs (unless the last one just failed). True when the
        caller may wait for it (``add_waiter``), False when it should fail now."""
        if self.task is None:
            if time.monotonic() - self.failed_at < FAILED_REFETCH_INTERVAL:
                return False
            self._start()
        return not (self.async_fetch and self.fast_listener)

    def add_waiter(self, callback: Callable[[], None]) -> None:
        """``callback`` runs (soon, on the loop) when the fetch in flight ends."""
        if self.task is None:
            self.loop.call_soon(callback)
        else:
            self.waiters.append(callback)

    # -- fetching ----------------------------------------------------------------------------------

    def _start(self) -> None:
        if self.closed:
            return
        self.task = tasks.spawn(self._fetch(), name=f"jwks {self.url}")

    async def _fetch(self) -> None:
        ok = False
        try:
            cluster = self.cluster_for()
            if cluster is None:
                raise ClientError("no dynamic forward proxy cluster to fetch it through")
            resp = await fetch(
                cluster,
                self.url,
                headers=[(b"accept", b"application/json")],
                time_limit=FETCH_TIME_LIMIT,
                max_body=MAX_JWKS_BYTES,
            )
            if resp.status != 200:
                raise ClientError(f"status {resp.status}")
            text = resp.body.decode("utf-8")
            if not text.lstrip().startswith("{"):
                raise JwksError("Jwks is an invalid JSON")
            self.keys = parse_key_text(text, strict=False)
            self.fetched_at = time.monotonic()
            self.last_error = ""
            ok = True
            self.st_success.value += 1
            log.info("jwks %s: fetched %d keys", self.url, len(self.keys))
        except (ClientError, JwksError, UnicodeDecodeError) as exc:
            self.failed_at = time.monotonic()
            self.last_error = str(exc)
            self.st_failed.value += 1
            log.warning(
                "jwks %s: fetch failed: %s (%s)",
                self.url,
                exc,
                "keeping the previous keys" if self.keys is not None else "no keys yet",
            )
        finally:
            self.task = None
            waiters, self.waiters = self.waiters, []
            for callback in waiters:
                self.loop.call_soon(callback)
            if self.async_fetch and self.timer is None and not self.closed:
                delay = self.cache_duration if ok else FAILED_REFETCH_INTERVAL
                self.timer = self.loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        idle = time.monotonic() - self.last_used > IDLE_PERIODS * self.cache_duration
        if self.task is None and not idle:
            self._start()

    def close(self) -> None:
        """Process exit: stop the timer and any fetch."""
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.task is not None:
            self.task.cancel()
            self.task = None
