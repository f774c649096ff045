"""``extauth``: Gloo's external authorization options (enterprise ``extauth.proto``), HTTP
service flavour.

``Settings`` goes on the listener (``httpGateway.options.extauth``; Gloo puts it in its
Settings or on the listener); ``ExtAuthExtension`` on a virtual host or route
(``options.extauth``). Where Gloo needs resources dfproxy does not read (an Upstream for
``extauthzServerRef``, an AuthConfig for ``configRef``), the field is an error that says what
to write instead: the server's address is the dfproxy extension ``serverUri``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from dfproxy.config.schema.jwt import FRAMING_HEADERS
from dfproxy.config.schema_base import Duration, Model

# Gloo's Settings.status_on_error: "must be one of the following".
STATUS_ON_ERROR = frozenset(
    [100, *range(200, 209), 226, *range(300, 306), 307, 308]
    + [*range(400, 418), 421, 422, 423, 424, 426, 428, 429, 431]
    + [*range(500, 509), 510, 511]
)


class ResourceRef(Model):
    name: str = Field(min_length=1)
    namespace: str | None = None


class HttpServiceRequest(Model):
    allowed_headers: list[str] = Field(default_factory=list)
    headers_to_add: dict[str, str] = Field(default_factory=dict)
    allowed_headers_regex: list[str] = Field(default_factory=list)


class HttpServiceResponse(Model):
    allowed_upstream_headers: list[str] = Field(default_factory=list)
    allowed_client_headers: list[str] = Field(default_factory=list)
    allowed_upstream_headers_to_append: list[str] = Field(default_factory=list)

    @field_validator("allowed_upstream_headers", "allowed_upstream_headers_to_append")
    @classmethod
    def _not_framing(cls, value: list[str]) -> list[str]:
        # The service's own Content-Length and Transfer-Encoding are in every answer.
        for name in value:
            if name.lower() in FRAMING_HEADERS:
                raise ValueError(f"{name!r} cannot be set on the upstream request")
        return value


class HttpService(Model):
    path_prefix: str = ""
    request: HttpServiceRequest = Field(default_factory=HttpServiceRequest)
    response: HttpServiceResponse = Field(default_factory=HttpServiceResponse)

    @field_validator("path_prefix")
    @classmethod
    def _slash(cls, value: str) -> str:
        if value and not value.startswith("/"):
            raise ValueError(f"pathPrefix must start with '/', got {value!r}")
        return value


class BufferSettings(Model):
    max_request_bytes: int = Field(default=4096, ge=0)
    allow_partial_message: bool = False
    pack_as_bytes: bool = False


class DecisionCache(Model):
    """dfproxy extension: remember the service's 2xx/4xx answers for ``ttl``, keyed by
    everything sent to it. Off by default (``ttl: 0s``)."""

    ttl: Duration = Field(default=0.0, ge=0)
    max_entries: int = Field(default=1024, ge=1)


class Settings(Model):
    """Gloo's extauth ``Settings``."""

    extauthz_server_ref: ResourceRef | None = None
    # dfproxy extension: the authorization service, ``http://host:port`` (Envoy's
    # HttpService.server_uri.uri), called through the listener's DFP cluster.
    server_uri: str | None = None
    http_service: HttpService | None = None
    grpc_service: dict[str, Any] | None = None
    user_id_header: str = ""
    request_timeout: Duration = Field(default=0.2, gt=0)
    failure_mode_allow: bool = False
    request_body: BufferSettings | None = None
    clear_route_cache: bool = False
    status_on_error: int = 403
    transport_api_version: str | None = None
    stat_prefix: str = ""
    decision_cache: DecisionCache = Field(default_factory=DecisionCache)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.extauthz_server_ref is not None:
            raise ValueError(
                "extauthzServerRef needs a gloo.solo.io/v1 Upstream, which dfproxy does not "
                "read; give the service as serverUri: http://host:port (dfproxy extension)"
            )
        if self.server_uri is None:
            raise ValueError("extauth needs serverUri: http://host:port (the HTTP service)")
        if not self.server_uri.startswith(("http://", "https://")):
            raise ValueError(f"serverUri must be http://host:port, got {self.server_uri!r}")
        if self.grpc_service is not None:
            raise ValueError("grpcService is not supported: dfproxy calls an HTTP service")
        if self.request_body is not None:
            raise ValueError(
                "requestBody (sending the request body to the service) is not supported yet"
            )
        if self.clear_route_cache:
            raise ValueError("clearRouteCache is not supported (routes are chosen first)")
        if self.status_on_error not in STATUS_ON_ERROR:
            raise ValueError(
                f"statusOnError {self.status_on_error} is not one of the statuses Gloo allows"
            )
        return self


class CustomAuth(Model):
    context_extensions: dict[str, str] = Field(default_factory=dict)
    name: str = ""

    @model_validator(mode="after")
    def _http_only(self) -> CustomAuth:
        if self.context_extensions:
            raise ValueError(
                "contextExtensions travel only in gRPC CheckRequests; the HTTP service "
                "cannot receive them"
            )
        if self.name:
            raise ValueError("name (named extauth servers) is not supported: one server")
        return self


class ExtAuthExtension(Model):
    """Gloo's ``ExtAuthExtension`` (a oneof)."""

    disable: bool | None = None
    config_ref: ResourceRef | None = None
    custom_auth: CustomAuth | None = None

    @model_validator(mode="after")
    def _oneof(self) -> ExtAuthExtension:
        given = [
            n
            for n, v in (
                ("disable", self.disable),
                ("configRef", self.config_ref),
                ("customAuth", self.custom_auth),
            )
            if v is not None
        ]
        if len(given) != 1:
            raise ValueError("extauth sets exactly one of disable, configRef, customAuth")
        if self.config_ref is not None:
            raise ValueError(
                "configRef needs Gloo Enterprise's extauth server and its AuthConfig; "
                "dfproxy calls your own HTTP service: use customAuth: {}"
            )
        return self
