"""Global limits counted in Redis, shared by every dfproxy process and machine.

One request's limits (any number of descriptors) are decided by one atomic Lua script, run
with EVALSHA: one round trip per request. The script takes Redis's own clock (``TIME``), so
every process and machine agrees on the window, whatever its own clock says.

* FIXED_WINDOW (the envoyproxy/ratelimit service's algorithm): one counter per descriptor and
  unit window, ``INCR`` then ``EXPIRE`` on the first hit; over the limit when the count
  passes ``requestsPerUnit``. Every limit of the request is counted, as the service does.
* TOKEN_BUCKET: ``requestsPerUnit`` tokens refilled continuously over one unit, stored as
  (tokens, time) in a hash; no burst of twice the limit across a window edge.

The failure mode (Gloo ``denyOnFail``; Envoy ``failure_mode_deny``) applies when Redis does
not answer within ``requestTimeout`` (50 ms by default) or cannot be reached. After a
failure Redis is left alone for ``retryInterval`` so an outage costs one timeout per interval,
not one per request; the client reconnects by itself on the next try.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from dfproxy import tasks
from dfproxy.config.schema.ratelimit import RateLimitServer

log = logging.getLogger("dfproxy.ratelimit")

# KEYS[i]: a descriptor's counter; ARGV per key: algorithm (0 fixed window, 1 token bucket),
# requests per unit, unit seconds. Returns per key: over (0/1), remaining, seconds to reset.
LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
for i, key in ipairs(KEYS) do
  local b = (i - 1) * 3
  local algo = tonumber(ARGV[b + 1])
  local limit = tonumber(ARGV[b + 2])
  local unit = tonumber(ARGV[b + 3])
  if algo == 0 then
    local window = math.floor(now / unit) * unit
    local k = key .. ':' .. window
    local n = redis.call('INCR', k)
    if n == 1 then redis.call('EXPIRE', k, unit) end
    local left = limit - n
    if left < 0 then left = 0 end
    out[#out + 1] = (n > limit) and 1 or 0
    out[#out + 1] = left
    out[#out + 1] = math.ceil(window + unit - now)
  else
    local st = redis.call('HMGET', key, 'v', 't')
    local tokens = tonumber(st[1])
    local ts = tonumber(st[2])
    if tokens == nil or ts == nil then
      tokens = limit
      ts = now
    end
    if now > ts and limit > 0 then
      tokens = math.min(limit, tokens + (now - ts) * limit / unit)
    end
    local over = 1
    if tokens >= 1 then
      tokens = tokens - 1
      over = 0
    end
    redis.call('HSET', key, 'v', tostring(tokens), 't', tostring(now))
    redis.call('EXPIRE', key, unit + 1)
    local reset = 0
    if limit > 0 and tokens < 1 then reset = math.ceil((1 - tokens) * unit / limit) end
    out[#out + 1] = over
    out[#out + 1] = math.floor(tokens)
    out[#out + 1] = reset
  end
end
return out
"""

FIXED_WINDOW, TOKEN_BUCKET = 0, 1
# Requests per pipeline: a burst larger than this goes out as several pipelines at once.
MAX_BATCH = 128
# The callback of one submitted request: (the script's result, "") or (None, why it failed).
Done = Callable[[list[int] | None, str], None]
# At most one failure line per this many seconds (an outage would otherwise log per request).
LOG_INTERVAL = 10.0


class RedisUnavailable(Exception):
    """Redis did not answer in time or could not be reached (the failure mode applies)."""


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``; port 6379 when absent). Raises ValueError."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif address.count(":") == 1:
        host, _, port = address.partition(":")
    else:
        host, port = address, ""
    if not host:
        raise ValueError(f"redis.address {address!r} has no host")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"redis.address {address!r} has a bad port")
    return host, int(port) if port else 6379


class RedisLimiter:
    """The Redis client of one ``rateLimitServer``, shared by every route (``runtime.shared``)."""

    def __init__(self, server: RateLimitServer) -> None:
        # Imported here: redis-py adds ~100 ms to every proxy start-up, and only a proxy with
        # a rateLimitServer needs it.
        import redis.asyncio as aioredis
        from redis.exceptions import NoScriptError, RedisError

        self._redis_errors = (RedisError, OSError, TimeoutError)
        self._no_script = NoScriptError
        r = server.redis
        host, port = parse_address(r.address)
        password = None
        if r.password_file:
            with open(r.password_file, encoding="utf-8") as f:
                password = f.read().strip()
        self.timeout = server.request_timeout
        self.retry_interval = server.retry_interval
        pool = aioredis.BlockingConnectionPool(
            host=host,
            port=port,
            db=r.db,
            username=r.username,
            password=password,
            max_connections=r.max_connections,
            timeout=server.request_timeout,  # waiting for a free connection
            socket_timeout=server.request_timeout,
            socket_connect_timeout=server.request_timeout,
        )
        self.client = aioredis.Redis.from_pool(pool)  # the client owns (and closes) the pool
        self.script = self.client.register_script(LUA)
        self.down_until = 0.0
        self._last_log = 0.0
        self._suppressed = 0
        self.failures = 0
        self.batches = 0  # pipelines (or single calls) sent: one round trip each
        self._queue: list[tuple[Sequence[str], Sequence[int], Done]] = []
        self._scheduled = False

    def submit(self, keys: Sequence[str], args: Sequence[int], done: Done) -> bool:
        """Queue one request's hits; ``done(result, "")`` or ``done(None, reason)`` is called
        later, within the timeout. False (nothing queued) while backing off after a failure.

        Requests submitted in the same event-loop turn go out together as one pipeline: one
        write and one round trip for all of them. redis-py spends ~150 µs of CPU per command
        call (pool, timeout, packing, parsing; measured with bench/ratelimit.py); a pipeline
        pays the fixed part once per batch instead of once per request.
        """
        if self.down_until and time.monotonic() < self.down_until:
            return False
        self._queue.append((keys, args, done))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return True

    async def check(self, keys: Sequence[str], args: Sequence[int]) -> list[int]:
        """``submit`` as a coroutine: the script's flat result (over, remaining, reset per
        key). Raises RedisUnavailable."""
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()

        def done(result: list[int] | None, reason: str) -> None:
            if result is None:
                future.set_exception(RedisUnavailable(reason))
            else:
                future.set_result(result)

        if not self.submit(keys, args, done):
            raise RedisUnavailable("redis is backing off after a failure")
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        queue = self._queue
        while queue:
            batch, queue = queue[:MAX_BATCH], queue[MAX_BATCH:]
            tasks.spawn(self._run(batch), name="ratelimit-redis")
        self._queue = []

    async def _run(self, batch: list[tuple[Sequence[str], Sequence[int], Done]]) -> None:
        self.batches += 1
        try:
            async with asyncio.timeout(self.timeout):
                results = await self._execute(batch)
        except self._redis_errors as exc:
            self.failures += 1
            self.down_until = time.monotonic() + self.retry_interval
            self._log_failure(exc)
            reason = str(exc) or type(exc).__name__
            for _, _, done in batch:
                done(None, reason)
            return
        self.down_until = 0.0
        for (_, _, done), result in zip(batch, results, strict=True):
            done([int(x) for x in result], "")

    async def _execute(self, batch: list[tuple[Sequence[str], Sequence[int], Done]]) -> list[Any]:
        script = self.script
        if len(batch) == 1:
            keys, args, _ = batch[0]
            return [await script(keys=list(keys), args=list(args))]
        for attempt in range(2):
            # EVALSHA in a plain pipeline: redis-py's pipelined Script would send SCRIPT
            # EXISTS first on every execute, a second round trip.
            pipe = self.client.pipeline(transaction=False)
            for keys, args, _ in batch:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            try:
                results: list[Any] = await pipe.execute()
                return results
            except self._no_script:
                if attempt:
                    raise
                script.sha = await self.client.script_load(LUA)  # Redis restarted or flushed
        raise AssertionError("unreachable")

    def _log_failure(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_log < LOG_INTERVAL:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
        log.warning("rate limit redis failed: %s%s", str(exc) or type(exc).__name__, more)
        self._last_log = now
        self._suppressed = 0

    def close(self) -> None:
        """Close the connections (process exit or a reload that dropped the server)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no running loop: the process is exiting and the sockets go with it
        tasks.spawn(self.aclose(), name="redis-close")

    async def aclose(self) -> None:
        await self.client.aclose()
