"""``proxyAuth``: proxy authentication (``Proxy-Authorization: Basic``), a dfproxy extension.

Gloo has no forward-proxy authentication, so the shape follows Gloo's style: the settings on
the listener (``httpGateway.options.proxyAuth``), and a ``{disable: true}`` switch on a
virtual host or route (``options.proxyAuth``), as Gloo's ``ExtAuthExtension.disable``.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from dfproxy.config.schema_base import Duration, Model


class ProxyUser(Model):
    """One user of the static list; ``passwordHash`` in an htpasswd format (bcrypt
    ``$2y$``/``$2b$``, or ``{SHA}``)."""

    name: str = Field(min_length=1)
    password_hash: str = Field(min_length=1)


class FailureLimit(Model):
    """After ``maxFailures`` failed attempts from one client address within ``window``,
    that address is refused (429) without a password check until the window ends."""

    max_failures: int = Field(default=10, ge=1)
    window: Duration = Field(default=60.0, gt=0)
    # Addresses tracked at once; the oldest are forgotten first (a bound on memory).
    max_tracked_clients: int = Field(default=10000, ge=1)


class VerifiedCache(Model):
    """Verified credentials, keyed by the exact ``Proxy-Authorization`` bytes, so keep-alive
    traffic does not run bcrypt for each request. ``ttl: 0s`` turns it off."""

    ttl: Duration = Field(default=5.0, ge=0)
    max_entries: int = Field(default=1024, ge=1)


class ProxyAuthSettings(Model):
    """``httpGateway.options.proxyAuth``."""

    realm: str = Field(default="dfproxy", min_length=1)
    htpasswd_file: str | None = None
    users: list[ProxyUser] = Field(default_factory=list)
    failure_limit: FailureLimit = Field(default_factory=FailureLimit)
    cache: VerifiedCache = Field(default_factory=VerifiedCache)
    # bcrypt checks waiting for or running in the thread pool; more get 503.
    max_pending_checks: int = Field(default=256, ge=1)

    @model_validator(mode="after")
    def _source(self) -> ProxyAuthSettings:
        if self.htpasswd_file is None and not self.users:
            raise ValueError("proxyAuth needs htpasswdFile or users (or both)")
        if '"' in self.realm or "\\" in self.realm:
            raise ValueError("realm must not contain a double quote or a backslash")
        return self


class ProxyAuthOverride(Model):
    """``options.proxyAuth`` on a virtual host or route."""

    disable: bool = False
