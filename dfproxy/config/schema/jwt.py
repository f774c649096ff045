"""Gloo's JWT options (``projects/gloo/api/v1/enterprise/options/jwt/jwt.proto``, reference
§8.9): ``virtualHost.options.jwt`` / ``jwtStaged``, route ``jwt`` / ``jwtStaged`` /
``jwtProvidersStaged``. Key material and URLs are checked here, so a bad key is a config
error with its field path."""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from dfproxy.config.schema_base import Duration, Model
from dfproxy.http.headers import HOP_BY_HOP
from dfproxy.jwt_authn.keys import parse_key_text
from dfproxy.jwt_authn.status import JwksError

# RFC 9110 §5.1: a field name is a token.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")

# Headers a policy never sets on the upstream request from what a token or a service says:
# they frame the message or belong to one hop (RFC 9110 §7.6.1), and the proxy writes its
# own. A GET given a Content-Length would leave the pooled upstream connection reading the
# next request (another client's) as its body.
FRAMING_HEADERS = frozenset({"content-length", *(n.decode() for n in HOP_BY_HOP)})


def _header_name(value: str) -> str:
    if not _TOKEN.match(value):
        raise ValueError(f"{value!r} is not a valid HTTP header name")
    if value.startswith(":") or value.lower() == "host":
        raise ValueError(f"{value!r} cannot be used here")
    return value


class LocalJwks(Model):
    key: str

    @field_validator("key")
    @classmethod
    def _parses(cls, value: str) -> str:
        try:
            parse_key_text(value)
        except JwksError as exc:
            raise ValueError(str(exc)) from None
        return value


class UpstreamRef(Model):
    name: str
    namespace: str | None = None


class AsyncFetch(Model):
    fast_listener: bool = False


class RemoteJwks(Model):
    url: str
    # Accepted for Gloo compatibility: dfproxy has no Upstreams, the URL's host is resolved
    # and reached through the dynamic forward proxy cluster.
    upstream_ref: UpstreamRef | None = None
    cache_duration: Duration = Field(default=300.0, gt=0)
    async_fetch: AsyncFetch | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL with a host, got {value!r}")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"invalid URL {value!r}: {exc}") from None
        return value


class Jwks(Model):
    local: LocalJwks | None = None
    remote: RemoteJwks | None = None

    @model_validator(mode="after")
    def _one(self) -> Jwks:
        if (self.local is None) == (self.remote is None):
            raise ValueError("jwks sets exactly one of local, remote")
        return self


class HeaderSource(Model):
    header: str
    prefix: str = ""

    @field_validator("header")
    @classmethod
    def _name(cls, value: str) -> str:
        return _header_name(value)


class TokenSource(Model):
    headers: list[HeaderSource] = Field(default_factory=list)
    query_params: list[str] = Field(default_factory=list)

    @field_validator("query_params")
    @classmethod
    def _params(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name or any(c in name for c in "&=?# "):
                raise ValueError(f"invalid query parameter name {name!r}")
        return value


class ClaimToHeader(Model):
    claim: str = Field(min_length=1)
    header: str
    append: bool = False

    @field_validator("header")
    @classmethod
    def _name(cls, value: str) -> str:
        if value.lower() in FRAMING_HEADERS:
            raise ValueError(f"{value!r} cannot be used here (it frames the request)")
        return _header_name(value)


class Provider(Model):
    jwks: Jwks
    audiences: list[str] = Field(default_factory=list)
    issuer: str = ""
    token_source: TokenSource | None = None
    keep_token: bool = False
    claims_to_headers: list[ClaimToHeader] = Field(default_factory=list)
    clock_skew_seconds: int = Field(default=60, ge=0, le=2**32 - 1)  # 0: Envoy's 60
    attach_failed_status_to_metadata: str = ""


ValidationPolicy = Literal["REQUIRE_VALID", "ALLOW_MISSING", "ALLOW_MISSING_OR_FAILED"]


class VhostExtension(Model):
    providers: dict[str, Provider]
    allow_missing_or_failed_jwt: bool = False  # deprecated: ALLOW_MISSING_OR_FAILED
    validation_policy: ValidationPolicy = "REQUIRE_VALID"

    @field_validator("providers")
    @classmethod
    def _some(cls, value: dict[str, Provider]) -> dict[str, Provider]:
        if not value:
            raise ValueError("at least one provider is required")
        return value


class JwtStagedVhostExtension(Model):
    before_ext_auth: VhostExtension | None = None
    after_ext_auth: VhostExtension | None = None


class RouteExtension(Model):
    disable: bool = False


class JwtStagedRouteExtension(Model):
    before_ext_auth: RouteExtension | None = None
    after_ext_auth: RouteExtension | None = None


class JwtStagedRouteProvidersExtension(Model):
    before_ext_auth: VhostExtension | None = None
    after_ext_auth: VhostExtension | None = None
