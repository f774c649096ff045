"""The rate limit policy as compiled at config load: plain values, built into filters later."""

from __future__ import annotations

from dataclasses import dataclass

from dfproxy.config.schema import ratelimit as rs
from dfproxy.ratelimit import descriptors as D


@dataclass(frozen=True)
class BucketSpec:
    scope: str  # which routes share it: "listener", "vhost:<where>", "route:<where>:<i>"
    label: str  # the stat prefix part: "", "<vs>", "<vs>.<route>"
    bucket: rs.TokenBucket


@dataclass(frozen=True)
class LocalDescriptor:
    name: str
    builder: D.DescriptorBuilder
    bucket: rs.TokenBucket
    max_buckets: int


@dataclass(frozen=True)
class CompiledLocal:
    default: BucketSpec | None
    descriptors: tuple[LocalDescriptor, ...]
    descriptor_scope: str
    descriptor_label: str
    headers: bool
    retry_after: bool


@dataclass(frozen=True)
class GlobalRule:
    config: str  # "<namespace>.<name>" of the RateLimitConfig, or "basic"
    builder: D.DescriptorBuilder
    tree: dict[str, D.Node]


@dataclass(frozen=True)
class CompiledGlobal:
    server: rs.RateLimitServer
    rules: tuple[GlobalRule, ...]
    basic: rs.IngressRateLimit | None
    basic_scope: str


@dataclass(frozen=True)
class Compiled:
    local: CompiledLocal | None
    global_: CompiledGlobal | None
