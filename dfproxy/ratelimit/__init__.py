"""Rate limits: local token buckets, Redis-backed global limits, downstream connection limits.

Pure logic (``token_bucket``, ``descriptors``) is separate from I/O (``redis_limiter``); the
HTTP filter is ``dfproxy.filters.ratelimit`` and the connection limit ``connection_limit``.
"""
