"""Providers and the requirement that combines them: which tokens a request carries, which
provider accepts them, and the one status a refused request is answered with.

Semantics are Envoy's jwt_authn as Gloo configures it (Gloo turns a VhostExtension into one
``provider_name`` requirement, or ``requires_any`` of its providers plus ``allow_missing`` /
``allow_missing_or_failed``):

* Per provider (``authenticator.cc``): no token -> "Jwt is missing". Every token found must
  verify (a good token beside a bad one fails: the upstream might read the bad one). The
  checks run in Envoy's order: parse, issuer, ``nbf``/``exp`` with the clock skew, audiences,
  then the signature with the provider's keys.
* Providers are OR-ed (``AnyVerifierImpl``): the first that accepts wins; when none does the
  answer is the last failure that is not "missing" or "issuer not configured" (a token from
  another issuer is not this provider's business), else "Jwt is missing".
* ``ALLOW_MISSING`` passes when that answer is missing-like; ``ALLOW_MISSING_OR_FAILED``
  always passes (a good token still sets claims and the payload).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from dfproxy.jwt_authn import status as st
from dfproxy.jwt_authn.extract import Location, Request, Token, extract
from dfproxy.jwt_authn.keys import Key, verify_signature
from dfproxy.jwt_authn.status import JwtError
from dfproxy.jwt_authn.token import Jwt, audiences_allowed, claim, claim_header_value

REQUIRE_VALID = "REQUIRE_VALID"
ALLOW_MISSING = "ALLOW_MISSING"
ALLOW_MISSING_OR_FAILED = "ALLOW_MISSING_OR_FAILED"

# Not an Envoy status: the provider's remote keys are being fetched; evaluate again later.
WAIT = "wait for keys"

DEFAULT_CLOCK_SKEW = 60  # Envoy kClockSkewInSecond; 0 in the config means this too

# Verified tokens each provider remembers (Envoy's jwt_cache_config, on here): a client that
# sends the same token again skips the parse and the signature (RS256 ~60 -> ~5 µs, see
# bench/jwt_verify.py). An entry is only used with the very key set that verified it, so a
# rotated remote JWKS re-verifies; expiry is checked on every use. Bounded in count and size.
MAX_VERIFIED_TOKENS = 1024
MAX_CACHED_TOKEN_BYTES = 4096  # Envoy kMaxJwtSizeForCache


class KeySource(Protocol):
    """A provider's keys: local ones (always there) or a remote JWKS cache."""

    def current(self) -> tuple[Key, ...] | None:
        """The keys to verify with now, or None while there are none."""
        ...


class LocalKeys:
    __slots__ = ("keys",)

    def __init__(self, keys: tuple[Key, ...]) -> None:
        self.keys = keys

    def current(self) -> tuple[Key, ...] | None:
        return self.keys


class ClaimHeader(NamedTuple):
    path: tuple[str, ...]  # "a.b" -> ("a", "b")
    header: bytes  # lower-case
    append: bool


class Provider:
    """One compiled Gloo Provider."""

    __slots__ = (
        "name",
        "issuer",
        "audiences",
        "locations",
        "keep_token",
        "claims",
        "clock_skew",
        "failed_status_key",
        "keys",
        "verified",
    )

    def __init__(
        self,
        name: str,
        keys: KeySource,
        *,
        issuer: str = "",
        audiences: frozenset[str] = frozenset(),
        locations: tuple[Location, ...],
        keep_token: bool = False,
        claims: tuple[ClaimHeader, ...] = (),
        clock_skew: int = DEFAULT_CLOCK_SKEW,
        failed_status_key: str = "",
    ) -> None:
        self.name = name
        self.keys = keys
        self.issuer = issuer
        self.audiences = audiences  # normalised (token.normalize_audience)
        self.locations = locations
        self.keep_token = keep_token
        self.claims = claims
        self.clock_skew = clock_skew or DEFAULT_CLOCK_SKEW
        self.failed_status_key = failed_status_key
        self.verified: dict[bytes, tuple[Jwt, tuple[Key, ...]]] = {}

    def check(self, jwt: Jwt, now: int, keys_for: KeysFor) -> str:
        """Everything after parsing, in Envoy's order; OK, a failure status or WAIT."""
        if self.issuer and jwt.iss != self.issuer:
            return st.UNKNOWN_ISSUER
        status = jwt.check_time(now, self.clock_skew)
        if status != st.OK:
            return status
        if not audiences_allowed(self.audiences, jwt.aud):
            return st.AUDIENCE_NOT_ALLOWED
        keys = keys_for(self)
        if isinstance(keys, str):
            return keys  # JWKS_FETCH_FAIL or WAIT
        status = verify_signature(jwt.alg, jwt.kid, jwt.signed, jwt.signature, keys)
        if status == st.OK:
            self._remember(jwt, keys)
        return status

    def recall(self, token: bytes, now: int) -> Jwt | None:
        """A token this provider verified before with its current keys, still in time."""
        entry = self.verified.get(token)
        if entry is None:
            return None
        jwt, keys = entry
        if keys is not self.keys.current() or jwt.check_time(now, self.clock_skew) != st.OK:
            del self.verified[token]
            return None
        return jwt

    def _remember(self, jwt: Jwt, keys: tuple[Key, ...]) -> None:
        token = jwt.token
        if len(token) > MAX_CACHED_TOKEN_BYTES:
            return
        verified = self.verified
        if len(verified) >= MAX_VERIFIED_TOKENS:
            del verified[next(iter(verified))]  # the oldest entry
        verified[token] = (jwt, keys)


# keys_for(provider): the provider's keys, or a status (st.JWKS_FETCH_FAIL, or WAIT when a
# fetch is under way and the caller can wait for it).
KeysFor = Callable[[Provider], "tuple[Key, ...] | str"]


class Accepted(NamedTuple):
    provider: Provider
    tokens: list[tuple[Token, Jwt]]


class Decision(NamedTuple):
    allowed: bool
    status: str  # OK, the failure (also when a policy lets it pass), or WAIT
    accepted: Accepted | None


class Requirement:
    """A VhostExtension compiled: providers (OR-ed) and the validation policy."""

    __slots__ = ("providers", "policy")

    def __init__(self, providers: tuple[Provider, ...], policy: str = REQUIRE_VALID) -> None:
        self.providers = providers
        self.policy = policy

    def evaluate(self, request: Request, now: int, keys_for: KeysFor) -> Decision:
        """Decide one request (pure: reads the request, changes nothing)."""
        parsed: dict[bytes, Jwt | str] = {}
        found: dict[tuple[Location, ...], list[Token]] = {}
        statuses: list[str] = []
        waiting = False
        for provider in self.providers:
            tokens = found.get(provider.locations)
            if tokens is None:
                tokens = found[provider.locations] = extract(request, provider.locations)
            status, good = _verify_tokens(provider, tokens, now, keys_for, parsed)
            if status == st.OK:
                return Decision(True, st.OK, Accepted(provider, good))
            if status == WAIT:
                waiting = True
            statuses.append(status)
        if waiting:
            return Decision(False, WAIT, None)
        if len(self.providers) == 1 and self.policy == REQUIRE_VALID:
            final = statuses[0]  # a lone provider_name requirement: its own status
        else:
            final = st.MISSING
            for s in statuses:
                if s not in st.MISSING_LIKE:
                    final = s
        if self.policy == ALLOW_MISSING_OR_FAILED:
            return Decision(True, final, None)
        if self.policy == ALLOW_MISSING and final in st.MISSING_LIKE:
            return Decision(True, final, None)
        return Decision(False, final, None)


def _parse(token: bytes, parsed: dict[bytes, Jwt | str]) -> Jwt | str:
    jwt = parsed.get(token)
    if jwt is None:
        try:
            jwt = Jwt(token)
        except JwtError as exc:
            jwt = exc.status
        parsed[token] = jwt
    return jwt


def _verify_tokens(
    provider: Provider,
    tokens: list[Token],
    now: int,
    keys_for: KeysFor,
    parsed: dict[bytes, Jwt | str],
) -> tuple[str, list[tuple[Token, Jwt]]]:
    if not tokens:
        return st.MISSING, []
    good: list[tuple[Token, Jwt]] = []
    # Envoy verifies the last token found first and stops at the first failure.
    for token in reversed(tokens):
        known = provider.recall(token.value, now)
        if known is not None:
            good.append((token, known))
            continue
        jwt = _parse(token.value, parsed)
        if isinstance(jwt, str):
            return jwt, []
        status = provider.check(jwt, now, keys_for)
        if status != st.OK:
            return status, []
        good.append((token, jwt))
    return st.OK, good


def claim_headers(accepted: Accepted) -> list[tuple[bytes, bytes]]:
    """The (header, value) pairs the accepted provider's ``claimsToHeaders`` add."""
    out: list[tuple[bytes, bytes]] = []
    for _, jwt in accepted.tokens:
        for c in accepted.provider.claims:
            value = claim_header_value(claim(jwt.payload, c.path))
            if value is not None:
                out.append((c.header, value))
    return out


def payload_of(accepted: Accepted) -> dict[str, Any]:
    """The payload later filters see (the last token verified): a copy, since the parsed
    token may be reused from the verified-token cache by the next request."""
    return dict(accepted.tokens[-1][1].payload)
