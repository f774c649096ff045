"""Asynchronous name resolution: the c-ares resolver and the DNS cache on top of it."""
