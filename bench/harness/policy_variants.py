"""The variants of bench/policies.py: the blog's config with filters removed, plain DFP with
one egress policy added, the origin's page and the client's token."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from harness.servers import render

PAGE, PAGE_BYTES, SECRET_LINES = "page.txt", 10 * 1024, 4
SECRET = "ssn 123-45-6789, card 4397945340344828, visa 4111-1111-1111-1111.\n"
MASKED = "ssn XXX-XX-X789, card XXXXXXXXXXXX4828, visa XXXX-XXXX-XXXX-1111.\n"
FILLER = "The quick brown fox jumps over the lazy dog; the order has shipped.\n"
GATEWAY_HOST = "gateway.bench.test"  # the name the blog's clients send: the gateway's own
TENANT = "tenant-1"
BACKEND = f"{TENANT}.mypaas.bench.test"  # what the blog's template makes of TENANT
SEEN_TENANT = "x-seen-tenant-id"  # the origin echoes the x-mypaas-tenant-id it received
HUGE = 4_000_000_000  # limits that never trigger: what is measured is the checking

Docs = list[dict[str, Any]]


@dataclass(frozen=True)
class Env:
    origin_port: int
    redis: str  # host:port


@dataclass(frozen=True)
class Variant:
    """One dfproxy config. `base`: the variant it adds one filter to (its cost is the CPU
    difference); `counters`: (regex, every) on counter names: their increase over the
    measured run must be >= the requests (every=True) or 0 (every=False)."""

    slug: str
    label: str
    base: str | None
    config: Callable[[Docs, Env], Docs]
    jwt: bool = False  # the origin must see the tenant claim header
    template: bool = False  # the proxy must route to BACKEND, the template's name
    masked: bool = False  # the body must come back masked
    counters: tuple[tuple[str, bool], ...] = ()

    def config_yaml(self, blog: Docs, env: Env) -> str:
        return yaml.safe_dump_all(self.config(blog, env), sort_keys=False)


def _vhost(docs: Docs) -> dict[str, Any]:
    vhost: dict[str, Any] = docs[1]["spec"]["virtualHost"]
    return vhost


def blog_with(keep: str) -> Callable[[Docs, Env], Docs]:
    """The blog's config keeping only the filters named in `keep` ("jwt template dlp")."""

    def build(blog: Docs, env: Env) -> Docs:
        docs = copy.deepcopy(blog)
        vhost = _vhost(docs)
        route = vhost["routes"][0]
        if "jwt" not in keep:
            del vhost["options"]["jwt"]
        if "template" not in keep:
            del route["options"]["stagedTransformations"]
            del route["routeAction"]["dynamicForwardProxy"]["autoHostRewriteHeader"]
        if "dlp" not in keep:
            del route["options"]["dlp"]
        for holder in (vhost, route):
            if not holder.get("options"):
                holder.pop("options", None)
        return docs

    return build


def _local_limit(blog: Docs, env: Env) -> Docs:
    docs = blog_with("")(blog, env)
    bucket = {"maxTokens": HUGE, "tokensPerFill": HUGE, "fillInterval": "1s"}
    _vhost(docs)["options"] = {"ratelimit": {"localRatelimit": bucket}}
    return docs


# One limit on every request (a generic_key descriptor), never reached.
HUGE_LIMIT_CONFIG = f"""\
apiVersion: ratelimit.solo.io/v1alpha1
kind: RateLimitConfig
metadata: {{name: huge, namespace: gloo-system}}
spec:
  raw:
    descriptors:
    - {{key: generic_key, value: all, rateLimit: {{unit: HOUR, requestsPerUnit: {HUGE}}}}}
    rateLimits:
    - actions: [{{genericKey: {{descriptorValue: all}}}}]
"""


def _redis_limit(blog: Docs, env: Env) -> Docs:
    docs = blog_with("")(blog, env)
    # 1 s, not the 50 ms default: a slower answer under full load would fail open, unseen in
    # the figures (the run checks failure_mode_allowed stays 0).
    server = {"redis": {"address": env.redis}, "requestTimeout": "1s"}
    docs[0]["spec"]["httpGateway"]["options"]["rateLimitServer"] = server
    _vhost(docs)["options"] = {"rateLimitConfigs": {"refs": [{"name": "huge"}]}}
    return [*docs, yaml.safe_load(HUGE_LIMIT_CONFIG)]


def _destination_policy(blog: Docs, env: Env) -> Docs:
    docs = blog_with("")(blog, env)
    # The origin allowed, then the embedded default's rules (loopback denied on other ports).
    rule: dict[str, Any] = {"name": "origin", "action": "ALLOW", "cidrs": ["127.0.0.1/32"]}
    rule["ports"] = [env.origin_port]
    _vhost(docs)["options"] = {"destinationPolicy": {"secureDefaults": True, "rules": [rule]}}
    return docs


JWT_COUNTERS = ((r"\.jwt_authn\.allowed$", True), (r"\.jwt_authn\.denied$", False))
VARIANTS = (
    Variant("plain", "plain DFP", None, blog_with("")),
    Variant("jwt", "+ JWT", "plain", blog_with("jwt"), jwt=True, counters=JWT_COUNTERS),
    Variant(
        "template",
        "+ JWT + template",
        "jwt",
        blog_with("jwt template"),
        jwt=True,
        template=True,
        counters=JWT_COUNTERS,
    ),
    Variant(
        "blog",
        "+ JWT + template + DLP (blog path)",
        "template",
        blog_with("jwt template dlp"),
        jwt=True,
        template=True,
        masked=True,
        counters=(*JWT_COUNTERS, (r"\.dlp\.ssn\.matched$", True)),
    ),
    Variant(
        "local-limit",
        "+ local rate limit",
        "plain",
        _local_limit,
        counters=((r"local_rate_limit.*\.ok$", True), (r"rate_limited$", False)),
    ),
    Variant(
        "redis-limit",
        "+ Redis rate limit",
        "plain",
        _redis_limit,
        counters=(
            (r"^ratelimit\.[^.]+\.ok$", True),
            (r"^ratelimit\.[^.]+\.(error|over_limit|failure_mode_allowed)$", False),
        ),
    ),
    Variant(
        "destination",
        "+ destination policy (RBAC)",
        "plain",
        _destination_policy,
        counters=((r"\.rbac\.allowed$", True), (r"\.rbac\.denied$", False)),
    ),
)
SLUGS = tuple(v.slug for v in VARIANTS)


def page_bodies() -> tuple[bytes, bytes]:
    """The origin's 10 KiB page, and the page as DLP (SSN + ALL_CREDIT_CARDS) masks it."""
    lines = PAGE_BYTES // len(FILLER)
    secret_at = {lines * (k + 1) // (SECRET_LINES + 1) for k in range(SECRET_LINES)}
    raw = [SECRET if i in secret_at else FILLER for i in range(lines)]
    masked = [MASKED if i in secret_at else FILLER for i in range(lines)]
    tail = "." * (PAGE_BYTES - len("".join(raw)) - 1) + "\n"
    return "".join([*raw, tail]).encode(), "".join([*masked, tail]).encode()


def blog_docs(workdir: Path, origin_port: int, key: rsa.RSAPrivateKey) -> Docs:
    """bench/peers/dfproxy-blog.yaml with the public key and the origin port filled in."""
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    body = [line for line in pem.decode().splitlines() if not line.startswith("-----")]
    indent = "\n" + " " * 18  # the key's block scalar indentation in the template
    values: dict[str, str | int | Path] = {
        "PUBLIC_KEY_BODY": indent.join(body),
        "ORIGIN_PORT": origin_port,
    }
    path = render("dfproxy-blog.yaml", workdir / "blog.yaml", values)
    return list(yaml.safe_load_all(path.read_text()))


def blog_token(key: rsa.RSAPrivateKey) -> str:
    """One RS256 token as the blog's clients send it, valid for an hour."""
    now = int(time.time())
    claims = {"sub": "bench", "tenantId": TENANT, "iss": "mypaas.test", "aud": "frontend"}
    return jwt.encode({**claims, "iat": now, "exp": now + 3600}, key, algorithm="RS256")
