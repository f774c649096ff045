"""Load Gloo ``Gateway`` and ``VirtualService`` YAML into a ProxyConfig, or fail with every error.

A bad config never half-applies: the whole set of files is parsed and validated first, and
every error names the file, the document, the field path (``spec.virtualHost.routes[2]
.matchers[0].regex``), what was found and what was expected. Unknown fields get a "did you
mean"; Gloo fields dfproxy has not built yet say so.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from dfproxy import policies
from dfproxy.config import gloo_schema as gs
from dfproxy.config.model import (
    CircuitBreakers,
    DfpConfig,
    ListenerSpec,
    ProxyConfig,
    RouteSpec,
    VirtualHostSpec,
    default_virtual_host,
)
from dfproxy.config.schema.ratelimit import RateLimitConfig
from dfproxy.dns.cache import DnsCacheConfig
from dfproxy.dns.resolver import ResolverOptions
from dfproxy.router import HeaderMatcher, Matcher, QueryMatcher, RetryPolicy
from dfproxy.upstream.tls import TlsSettings

KINDS: dict[str, type[BaseModel]] = {
    "Gateway": gs.Gateway,
    "VirtualService": gs.VirtualService,
    "RateLimitConfig": RateLimitConfig,
}
REDIRECT_CODES = {
    "MOVED_PERMANENTLY": 301,
    "FOUND": 302,
    "SEE_OTHER": 303,
    "TEMPORARY_REDIRECT": 307,
    "PERMANENT_REDIRECT": 308,
}


class ConfigError(Exception):
    """Every problem found in a set of config files, one per line."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        n = len(self.errors)
        super().__init__(
            f"{n} configuration error{'s' if n != 1 else ''}:\n"
            + "\n".join(f"  - {e}" for e in self.errors)
        )


@dataclass
class Document:
    path: str
    index: int  # 1-based document number in the file
    kind: str
    resource: Any

    @property
    def where(self) -> str:
        name = getattr(getattr(self.resource, "metadata", None), "name", "?")
        return f"{self.path}: document {self.index} ({self.kind} {name})"


@dataclass
class _Errors:
    items: list[str] = field(default_factory=list)

    def add(self, where: str, path: str, message: str) -> None:
        item = f"{where}: {path}: {message}" if path else f"{where}: {message}"
        if item not in self.items:  # a VirtualService shared by two Gateways is checked twice
            self.items.append(item)


def _files(paths: Iterable[str]) -> list[str]:
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            out.extend(
                os.path.join(p, n)
                for n in sorted(os.listdir(p))
                if n.endswith((".yaml", ".yml")) and not n.startswith(".")
            )
        else:
            out.append(p)
    return out


def _policy_files(config: ProxyConfig) -> list[str]:
    """Files the compiled policies read (``source_files``, e.g. an htpasswd file): part of
    the version, so that SIGHUP after editing one reloads it."""
    found = {
        name
        for spec in config.listeners
        for vh in spec.virtual_hosts
        for route in vh.routes
        for compiled in route.policies.values()
        for name in getattr(compiled, "source_files", ())
    }
    return sorted(found)


def _format_loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _unwrap(annotation: Any) -> Any:
    """The model class inside Optional/list/dict/Annotated, or the annotation itself."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0] if args else annotation
            if len(args) <= 1:
                continue
            return annotation
        elif origin in (list, dict):
            annotation = typing.get_args(annotation)[-1]
        else:
            return annotation


def _model_at(root: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        match = None
        for name, info in model.model_fields.items():
            if part in (name, info.alias):
                match = info
                break
        if match is None:
            return None
        model = _unwrap(match.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _field_names(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _describe(error: Any, root: type[BaseModel]) -> tuple[str, str]:
    loc = list(error["loc"])
    typ = error["type"]
    if typ == "extra_forbidden":
        key = str(loc[-1])
        path = _format_loc(loc)
        if key in gs.NOT_SUPPORTED:
            return path, gs.NOT_SUPPORTED[key]
        parent = _model_at(root, loc[:-1])
        msg = f"unknown field {key!r}"
        if parent is not None:
            close = difflib.get_close_matches(key, _field_names(parent), n=1, cutoff=0.6)
            if close:
                msg += f"; did you mean {close[0]!r}?"
            else:
                msg += f"; expected one of: {', '.join(sorted(_field_names(parent)))}"
        return path, msg
    msg = error["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    found = error.get("input")
    if typ != "missing" and not isinstance(found, dict | list) and f"got {found!r}" not in msg:
        msg += f" (found: {found!r})"
    return _format_loc(loc), msg


def parse_documents(paths: Iterable[str]) -> tuple[list[Document], list[str]]:
    """Parse and schema-validate every document; returns the documents and all errors."""
    errors = _Errors()
    docs: list[Document] = []
    paths = list(paths)
    files = _files(paths)
    if not files:
        errors.add(", ".join(paths) or "config", "", "no YAML files (*.yaml, *.yml) found")
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                raw_docs = list(yaml.safe_load_all(f))
        except OSError as exc:
            errors.add(path, "", f"cannot read: {exc.strerror or exc}")
            continue
        except yaml.YAMLError as exc:
            errors.add(path, "", f"invalid YAML: {exc}")
            continue
        for i, raw in enumerate(raw_docs, start=1):
            where = f"{path}: document {i}"
            if raw is None:
                continue
            if not isinstance(raw, dict):
                errors.add(where, "", f"expected a mapping (a resource), got {type(raw).__name__}")
                continue
            kind = raw.get("kind")
            model = KINDS.get(kind) if isinstance(kind, str) else None
            if model is None:
                errors.add(
                    where,
                    "kind",
                    f"expected one of {', '.join(KINDS)} (apiVersion gateway.solo.io/v1), "
                    f"found {kind!r}",
                )
                continue
            name = (
                raw.get("metadata", {}).get("name")
                if isinstance(raw.get("metadata"), dict)
                else None
            )
            where = f"{path}: document {i} ({kind} {name or '?'})"
            try:
                resource = model.model_validate(raw)
            except ValidationError as exc:
                for err in exc.errors():
                    loc, msg = _describe(err, model)
                    errors.add(where, loc, msg)
                continue
            docs.append(Document(path, i, str(kind), resource))
    return docs, errors.items


def load_paths(paths: Iterable[str]) -> ProxyConfig:
    """Load files and folders into a ProxyConfig; raises ConfigError listing every problem."""
    paths = list(paths)
    docs, errors = parse_documents(paths)
    # The documents that parsed are checked further even when others did not, so one run
    # reports every error; cross-document checks need every document and wait for a clean parse.
    config, more = translate(docs, complete=not errors)
    errors += [e for e in more if e not in errors]
    if errors:
        raise ConfigError(errors)
    assert config is not None
    digest = hashlib.sha256()
    for path in _files(paths) + _policy_files(config):
        with open(path, "rb") as f:
            digest.update(f.read())
    config.version = digest.hexdigest()[:16]
    config.source = ", ".join(paths)
    return config


# -- translation into the internal model ---------------------------------------------------------


def _dfp(opt: gs.DynamicForwardProxy) -> DfpConfig:
    d = opt.dns_cache_config
    cache = DnsCacheConfig(
        dns_lookup_family=d.dns_lookup_family,
        dns_refresh_rate=d.dns_refresh_rate,
        dns_min_refresh_rate=d.dns_min_refresh_rate,
        host_ttl=d.host_ttl,
        max_hosts=d.max_hosts,
        dns_query_timeout=d.dns_query_timeout,
        max_pending_requests=(
            d.dns_cache_circuit_breaker.max_pending_requests
            if d.dns_cache_circuit_breaker
            else 1024
        ),
        failure_base_interval=(
            d.dns_failure_refresh_rate.base_interval if d.dns_failure_refresh_rate else None
        ),
        failure_max_interval=(
            d.dns_failure_refresh_rate.max_interval if d.dns_failure_refresh_rate else None
        ),
        disable_dns_refresh_on_failure=d.disable_dns_refresh_on_failure,
        preresolve_hostnames=[(a.address, a.port_value or 80) for a in d.preresolve_hostnames],
    )
    if d.key_value_store is not None:
        cache.store_filename = d.key_value_store.filename
        cache.store_flush_interval = d.key_value_store.flush_interval
        cache.store_max_entries = d.key_value_store.max_entries
    resolver = ResolverOptions()
    if d.cares_dns is not None:
        servers = []
        for r in d.cares_dns.resolvers:
            host = r.socket_address.address
            host = f"[{host}]" if ":" in host else host
            servers.append(f"{host}:{r.socket_address.port_value or 53}")
        opts = d.cares_dns.dns_resolver_options
        resolver = ResolverOptions(
            servers=tuple(servers),
            use_tcp=bool(opts and opts.use_tcp_for_dns_lookups),
            no_default_search_domain=bool(opts and opts.no_default_search_domain),
        )
    cb = opt.circuit_breakers
    breakers = (
        CircuitBreakers(
            cb.max_connections,
            cb.max_pending_requests,
            cb.max_requests,
            cb.max_retries,
            cb.track_remaining,
        )
        if cb
        else CircuitBreakers()
    )
    return DfpConfig(
        cache,
        resolver,
        breakers,
        opt.save_upstream_address,
        connect_timeout=opt.connect_timeout,
        upstream_idle_timeout=opt.upstream_idle_timeout,
        tls=_tls(opt.ssl_config) if opt.ssl_config is not None else None,
    )


def _tls(c: gs.UpstreamSslConfig) -> TlsSettings:
    files = c.ssl_files
    params = c.parameters
    return TlsSettings(
        root_ca=files.root_ca if files else None,
        cert=files.tls_cert if files else None,
        key=files.tls_key if files else None,
        sni=c.sni,
        verify_san=tuple(c.verify_subject_alt_name),
        alpn=tuple(c.alpn_protocols) or ("http/1.1",),
        min_version=(params.minimum_protocol_version if params else None) or "TLSv1_2",
        max_version=params.maximum_protocol_version if params else None,
    )


def _regex(text: str, flags: int, where: str, path: str, errors: _Errors) -> re.Pattern[str] | None:
    """Compile a matcher's regex, or record the error at ``path`` and return None."""
    try:
        return re.compile(text, flags)
    except re.error as exc:
        errors.add(where, path, f"invalid regular expression: {exc} (found: {text!r})")
        return None


def _matcher(m: gs.Matcher, where: str, path: str, errors: _Errors) -> Matcher:
    case = True if m.case_sensitive is None else m.case_sensitive
    rx = None
    if m.regex is not None:
        rx = _regex(m.regex, 0 if case else re.IGNORECASE, where, f"{path}.regex", errors)
    headers = [
        HeaderMatcher(
            h.name.lower().encode(),
            h.value,
            h.regex,
            h.invert_match,
            _regex(h.value, 0, where, f"{path}.headers[{j}].value", errors) if h.regex else None,
        )
        for j, h in enumerate(m.headers)
    ]
    query = [
        QueryMatcher(
            q.name,
            q.value,
            q.regex,
            _regex(q.value, 0, where, f"{path}.queryParameters[{j}].value", errors)
            if q.regex
            else None,
        )
        for j, q in enumerate(m.query_parameters)
    ]
    prefix = m.prefix
    if m.connect_matcher is None and m.exact is None and rx is None and prefix is None:
        prefix = "/"
    return Matcher(
        prefix=prefix if m.connect_matcher is None else None,
        exact=m.exact,
        regex=rx,
        connect=m.connect_matcher is not None,
        case_sensitive=case,
        headers=tuple(headers),
        query=tuple(query),
        methods=frozenset(x.upper().encode() for x in m.methods),
    )


def _headers_add(opts: list[gs.HeaderValueOption]) -> list[tuple[str, str, bool]]:
    return [(o.header.key, o.header.value, True if o.append is None else o.append) for o in opts]


def _route(r: gs.Route, i: int, vs_where: str, errors: _Errors) -> RouteSpec:
    path = f"spec.virtualHost.routes[{i}]"
    matchers = [
        _matcher(m, vs_where, f"{path}.matchers[{j}]", errors) for j, m in enumerate(r.matchers)
    ] or [Matcher(prefix="/")]
    spec = RouteSpec(name=r.name or f"route-{i}", matchers=matchers)
    if r.route_action is not None:
        dfp = r.route_action.dynamic_forward_proxy
        assert dfp is not None
        spec.action = "dfp"
        spec.host_rewrite = dfp.host_rewrite
        spec.host_rewrite_header = dfp.auto_host_rewrite_header
    elif r.direct_response_action is not None:
        spec.action = "direct"
        spec.direct_status = r.direct_response_action.status
        spec.direct_body = r.direct_response_action.body
    elif r.redirect_action is not None:
        a = r.redirect_action
        spec.action = "redirect"
        spec.redirect = {
            "host_redirect": a.host_redirect,
            "path_redirect": a.path_redirect,
            "prefix_rewrite": a.prefix_rewrite,
            "https_redirect": a.https_redirect,
            "strip_query": a.strip_query,
            "port_redirect": a.port_redirect,
            "response_code": REDIRECT_CODES[a.response_code],
        }
    o = r.options
    if o is not None:
        for u in o.upgrades:
            if u.connect_terminate is not None:
                spec.connect_terminate = u.connect_terminate.enabled is not False
            elif u.websocket is not None:
                spec.websocket = u.websocket.enabled is not False
        if o.timeout is not None:
            spec.timeout = o.timeout
        spec.prefix_rewrite = o.prefix_rewrite
        if o.retries is not None:
            rp = o.retries
            backoff = rp.retry_back_off
            base = backoff.base_interval if backoff else 0.025
            spec.retry = RetryPolicy(
                retry_on=frozenset(v.strip() for v in rp.retry_on.split(",") if v.strip()),
                num_retries=rp.num_retries,
                per_try_timeout=rp.per_try_timeout or 0.0,
                base_interval=base,
                max_interval=(backoff.max_interval if backoff else None) or 10 * base,
            )
        if o.host_rewrite is not None:
            spec.forward_host_rewrite = o.host_rewrite
        if o.header_manipulation is not None:
            h = o.header_manipulation
            spec.request_headers_to_add = _headers_add(h.request_headers_to_add)
            spec.request_headers_to_remove = list(h.request_headers_to_remove)
            spec.response_headers_to_add = _headers_add(h.response_headers_to_add)
            spec.response_headers_to_remove = list(h.response_headers_to_remove)
    if spec.connect_terminate and not any(m.connect for m in matchers):
        errors.add(
            vs_where,
            f"{path}.options.upgrades",
            "connectTerminate needs a connectMatcher on the route (HTTP/1.1 CONNECT has no path)",
        )
    return spec


def _virtual_host(doc: Document, errors: _Errors) -> VirtualHostSpec:
    vs: gs.VirtualService = doc.resource
    vh = vs.spec.virtual_host
    routes = [_route(r, i, doc.where, errors) for i, r in enumerate(vh.routes)]
    if vh.options is not None and vh.options.header_manipulation is not None:
        h = vh.options.header_manipulation
        for r in routes:
            r.request_headers_to_add = (
                _headers_add(h.request_headers_to_add) + r.request_headers_to_add
            )
            r.request_headers_to_remove = (
                list(h.request_headers_to_remove) + r.request_headers_to_remove
            )
            r.response_headers_to_add = (
                _headers_add(h.response_headers_to_add) + r.response_headers_to_add
            )
            r.response_headers_to_remove = (
                list(h.response_headers_to_remove) + r.response_headers_to_remove
            )
    for j, d in enumerate(vh.domains):
        if not d or (d != "*" and "*" in d[1:-1]):
            errors.add(
                doc.where,
                f"spec.virtualHost.domains[{j}]",
                f"invalid domain {d!r}: a wildcard may only lead or trail",
            )
    return VirtualHostSpec(
        name=f"{vs.metadata.namespace}.{vs.metadata.name}", domains=list(vh.domains), routes=routes
    )


def _selects(gw: gs.Gateway, vs: gs.VirtualService) -> bool:
    hg = gw.spec.http_gateway
    if hg is None:
        return True
    if hg.virtual_services is not None:
        return any(
            ref.name == vs.metadata.name
            and (ref.namespace or gw.metadata.namespace) == vs.metadata.namespace
            for ref in hg.virtual_services
        )
    if hg.virtual_service_selector is not None:
        labels = vs.metadata.labels
        return all(labels.get(k) == v for k, v in hg.virtual_service_selector.items())
    namespaces = hg.virtual_service_namespaces
    if namespaces is not None and "*" not in namespaces:
        return vs.metadata.namespace in namespaces
    return True


DEFAULT_GATEWAY = gs.Gateway.model_validate(
    {
        "apiVersion": "gateway.solo.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "gateway-proxy"},
        "spec": {
            "bindAddress": "127.0.0.1",
            "bindPort": 8080,
            "httpGateway": {
                "options": {
                    "dynamicForwardProxy": {},
                    "httpConnectionManagerSettings": {"upgrades": [{"connect": {"enabled": True}}]},
                }
            },
        },
    }
)


def _compile_policies(
    gdoc: Document,
    services: Sequence[Document],
    vhosts: Sequence[VirtualHostSpec],
    errors: _Errors,
    resources: dict[str, Document] | None = None,
) -> None:
    """Compile each route's policies (JWT, transformations, ...) against the options it
    inherits from this gateway, its virtual host and itself (dfproxy.policies)."""
    spec: gs.GatewaySpec = gdoc.resource.spec
    hg = spec.http_gateway
    gateway_options = getattr(spec, "options", None)
    listener_options = hg.options if hg is not None else None
    for index, vh in enumerate(vhosts):
        vs_doc = services[index] if index < len(services) else None
        gvh = vs_doc.resource.spec.virtual_host if vs_doc is not None else None
        for i, r in enumerate(vh.routes):
            gr = gvh.routes[i] if gvh is not None and i < len(gvh.routes) else None
            levels = policies.Levels(
                gateway=gateway_options,
                listener=listener_options,
                gateway_where=gdoc.where,
                vhost=gvh.options if gvh is not None else None,
                route=gr.options if gr is not None else None,
                vs_where=vs_doc.where if vs_doc is not None else "",
                route_index=i if gr is not None else -1,
                route_name=r.name,
                resources=resources or {},
            )
            r.policies = policies.compile_route(levels, errors)


def translate(
    docs: Sequence[Document], complete: bool = True
) -> tuple[ProxyConfig | None, list[str]]:
    """Resolve references and build the internal model; returns (config, errors).

    ``complete`` False: some documents failed to parse, so checks that look across documents
    (references, duplicate domains, DFP on the gateway) are skipped: they would report the
    absence of a document that is merely broken.
    """
    errors = _Errors()
    gateways = [d for d in docs if d.kind == "Gateway"]
    services = [d for d in docs if d.kind == "VirtualService"]
    if not gateways:
        gateways = [Document("<embedded>", 1, "Gateway", DEFAULT_GATEWAY)]
    seen_names: dict[str, str] = {}
    resources = {
        f"{d.kind}/{d.resource.metadata.namespace}/{d.resource.metadata.name}": d
        for d in docs
        if d.kind not in ("Gateway", "VirtualService")
    }
    for d in gateways + services:
        key = f"{d.kind}/{d.resource.metadata.namespace}/{d.resource.metadata.name}"
        if key in seen_names:
            errors.add(d.where, "metadata.name", f"duplicate {d.kind} (first in {seen_names[key]})")
        seen_names[key] = d.where
    binds: dict[tuple[str, int], str] = {}
    listeners: list[ListenerSpec] = []
    for gdoc in gateways:
        gw: gs.Gateway = gdoc.resource
        spec = gw.spec
        bind = (spec.bind_address, spec.bind_port)
        if bind in binds and spec.bind_port != 0:
            errors.add(
                gdoc.where,
                "spec.bindPort",
                f"{spec.bind_address}:{spec.bind_port} is already used by {binds[bind]}",
            )
        binds[bind] = gdoc.where
        options = spec.http_gateway.options if spec.http_gateway else None
        dfp = (
            _dfp(options.dynamic_forward_proxy)
            if options and options.dynamic_forward_proxy
            else None
        )
        connect_enabled = False
        websocket_enabled = True
        hcm = options.http_connection_manager_settings if options else None
        for j, u in enumerate(hcm.upgrades if hcm else []):
            if u.connect_terminate is not None:
                errors.add(
                    gdoc.where,
                    f"spec.httpGateway.options.httpConnectionManagerSettings.upgrades[{j}]",
                    "connect_terminate is not supported at HCM level; use 'connect' at "
                    "HCM level and 'connect_terminate' at route level",
                )
            elif u.connect is not None:
                connect_enabled = u.connect.enabled is not False
            elif u.websocket is not None:
                websocket_enabled = u.websocket.enabled is not False
        selected = [s for s in services if _selects(gw, s.resource)]
        hg = spec.http_gateway
        if complete and hg is not None and hg.virtual_services:
            names = {(s.resource.metadata.namespace, s.resource.metadata.name) for s in services}
            for j, ref in enumerate(hg.virtual_services):
                if (ref.namespace or gw.metadata.namespace, ref.name) not in names:
                    errors.add(
                        gdoc.where,
                        f"spec.httpGateway.virtualServices[{j}]",
                        f"no VirtualService named {ref.name!r} was given",
                    )
        if services:
            vhosts = [_virtual_host(s, errors) for s in selected]
        else:
            # The default VirtualService forwards everything through the DFP, so it brings
            # the DFP (with defaults) to a Gateway that does not configure one.
            vhosts = [default_virtual_host()]
            if dfp is None:
                dfp = _dfp(gs.DynamicForwardProxy())
        domains: dict[str, str] = {}
        for s, vh in zip(selected, vhosts, strict=False) if complete else ():
            for dom in vh.domains:
                if dom in domains:
                    errors.add(
                        s.where,
                        "spec.virtualHost.domains",
                        f"domain {dom!r} is also claimed by {domains[dom]} on gateway "
                        f"{gw.metadata.name}",
                    )
                domains[dom] = s.where
        _compile_policies(gdoc, selected if services else [], vhosts, errors, resources)
        for s, vh in zip(selected, vhosts, strict=False) if complete else ():
            for i, r in enumerate(vh.routes):
                if r.action == "dfp" and dfp is None:
                    errors.add(
                        s.where,
                        f"spec.virtualHost.routes[{i}].routeAction.dynamicForwardProxy",
                        f"gateway {gw.metadata.name} does not enable "
                        "httpGateway.options.dynamicForwardProxy",
                    )
        host = spec.bind_address
        listeners.append(
            ListenerSpec(
                name=gw.metadata.name,
                host=host,
                port=spec.bind_port,
                dfp=dfp,
                connect_enabled=connect_enabled,
                websocket_enabled=websocket_enabled,
                use_proxy_protocol=spec.use_proxy_proto,
                stream_idle_timeout=hcm.stream_idle_timeout if hcm else 300.0,
                idle_timeout=hcm.idle_timeout if hcm else 3600.0,
                request_headers_timeout=hcm.request_headers_timeout if hcm else 30.0,
                virtual_hosts=vhosts,
                connection_limit=spec.options.connection_limit if spec.options else None,
            )
        )
    if errors.items:
        return None, errors.items
    return ProxyConfig(listeners=listeners), []


def summary(config: ProxyConfig) -> str:
    """A few lines saying what will run (``dfproxy validate``)."""
    lines = [f"configuration OK (version {config.version}, from {config.source})"]
    for spec in config.listeners:
        dfp = f"dynamic forward proxy cluster {spec.dfp.cluster_name}" if spec.dfp else "no DFP"
        lines.append(f"listener {spec.name} on {spec.host}:{spec.port}: {dfp}")
        for vh in spec.virtual_hosts:
            lines.append(f"  virtual host {vh.name} domains {vh.domains}: {len(vh.routes)} routes")
            for r in vh.routes:
                extra = " (CONNECT terminated)" if r.connect_terminate else ""
                lines.append(f"    route {r.name}: {r.action}{extra}")
    return "\n".join(lines)
