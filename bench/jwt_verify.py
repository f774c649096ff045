"""Microbenchmark of JWT verification with a cached key (in-process, no sockets).

Four figures per algorithm, in µs per verification:
    signature  the signature check alone with the parsed key (cryptography/OpenSSL)
    parse      taking the token apart (base64url, two JSON documents, claim checks)
    request    the whole per-request decision of the filter's requirement for a token not
               seen before: extraction from the Authorization header, parse,
               issuer/time/audience checks, signature
    repeat     the same for a token the provider verified before (verified-token cache)

    .venv/bin/python bench/jwt_verify.py [--iterations 20000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from dfproxy.jwt_authn.extract import DEFAULT_LOCATIONS
from dfproxy.jwt_authn.keys import Key, parse_key_text, verify_signature
from dfproxy.jwt_authn.provider import LocalKeys, Provider, Requirement
from dfproxy.jwt_authn.token import Jwt


class Request:
    """The two Stream methods extraction uses."""

    def __init__(self, token: str) -> None:
        self.path = b"/api/orders?page=2"
        self.headers = [
            (b"user-agent", b"bench/1.0"),
            (b"accept", b"*/*"),
            (b"authorization", b"Bearer " + token.encode()),
        ]

    def request_header_joined(self, lname: bytes) -> bytes | None:
        for name, value in self.headers:
            if name == lname:
                return value
        return None

    def remove_request_header(self, lname: bytes) -> None:
        pass


def per_call(fn: Callable[[], object], n: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20000)
    n = parser.parse_args().iterations
    now = int(time.time())
    claims = {"iss": "issuer.test", "aud": "api", "sub": "alice", "iat": now, "exp": now + 3600}
    keys: dict[str, object] = {
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
    }
    print(f"{'alg':6} {'signature':>10} {'parse':>8} {'request':>8} {'repeat':>8}  (µs each)")
    for alg, private in keys.items():
        pem = (
            private.public_key()  # type: ignore[attr-defined]
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        parsed: tuple[Key, ...] = parse_key_text(pem)
        token = pyjwt.encode(claims, private, algorithm=alg)
        jwt = Jwt(token.encode())
        signature = per_call(
            lambda jwt=jwt, parsed=parsed: verify_signature(
                jwt.alg, jwt.kid, jwt.signed, jwt.signature, parsed
            ),
            n,
        )
        parse = per_call(lambda token=token: Jwt(token.encode()), n)
        provider = Provider(
            "p",
            LocalKeys(parsed),
            issuer="issuer.test",
            audiences=frozenset({"api"}),
            locations=DEFAULT_LOCATIONS,
        )
        requirement = Requirement((provider,))
        request = Request(token)

        def keys_for(p: Provider, parsed: tuple[Key, ...] = parsed) -> tuple[Key, ...]:
            return parsed

        def decide(request: Request = request, requirement: Requirement = requirement) -> None:
            assert requirement.evaluate(request, int(time.time()), keys_for).allowed

        def cold(decide: Callable[[], None] = decide, provider: Provider = provider) -> None:
            provider.verified.clear()
            decide()

        whole = per_call(cold, n)
        repeat = per_call(decide, n)
        print(f"{alg:6} {signature:10.1f} {parse:8.1f} {whole:8.1f} {repeat:8.1f}")


if __name__ == "__main__":
    main()
