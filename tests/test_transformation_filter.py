"""Gloo staged transformations through a real dfproxy process (dfproxy/filters/transformation.py).

One proxy for the module: one Gateway and a VirtualService per feature, told apart by the
Host (``*.test`` resolves to 127.0.0.1 on the test DNS server, so a name a transformation
builds reaches the module's origin). Covers the blog seed (a template builds the header the
route's ``autoHostRewriteHeader`` routes on), Gloo's e2e pattern (an early transform sets
``x-rewrite-me`` with ``parseBodyBehavior: DontParse``), the user-issue extractor on
``:path``, matcher selection, early before regular, vhost/route override and inheritance,
body templates and JSON, the 413 limit, and response transformations.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator

import pytest

from tests import shared_proxy
from tests.helpers import check_alive, module_proxy
from tests.support.clients import RawClient, RawResponse, encode_chunked
from tests.support.dns_server import DNSTestServer
from tests.support.gloo_yaml import gateway, virtual_service
from tests.support.origin import OriginServer
from tests.support.proxy import ProxyProcess

GATEWAY = gateway()
vs = virtual_service


# Templates too long for a YAML line, put in as JSON strings (valid YAML scalars).
TEMPLATES = {
    "@LENIENT@": "{% if context() %}json{% else %}raw: {{ body() }}{% endif %}",
    "@NOT_FOUND@": '{% if header(":status") == "404" %}not here{% else %}{{ body() }}{% endif %}',
    "@TEAPOT@": '{% if request_header("x-teapot") == "1" %}418'
    '{% else %}{{ header(":status") }}{% endif %}',
}


def config(port: int) -> str:
    text = _config(port)
    for key, template in TEMPLATES.items():
        text = text.replace(key, json.dumps(template))
    return text


def _config(port: int) -> str:
    dest = f"dest.test:{port}"
    return "---\n".join(
        [
            GATEWAY,
            # The blog seed: JWT leaves x-mypaas-tenant-id (here the client sends it), a
            # regular transformation builds the backend name, the DFP routes on it.
            vs(
                "blog",
                "mypaas.test",
                f"""
                - matchers: [{{prefix: /}}]
                  routeAction:
                    dynamicForwardProxy: {{autoHostRewriteHeader: x-mypaas-tenant-backend}}
                  options:
                    stagedTransformations:
                      regular:
                        requestTransforms:
                        - matcher: {{prefix: /}}
                          requestTransformation:
                            transformationTemplate:
                              headers:
                                x-mypaas-tenant-backend:
                                  text: '{{{{ header("x-mypaas-tenant-id") }}}}.mypaas.test:{port}'
                """,
            ),
            # Gloo's e2e test: an early transform sets x-rewrite-me, body not parsed.
            vs(
                "gloo-e2e",
                "e2e.test",
                f"""
                - matchers: [{{prefix: /}}]
                  routeAction: {{dynamicForwardProxy: {{autoHostRewriteHeader: x-rewrite-me}}}}
                  options:
                    stagedTransformations:
                      early:
                        requestTransforms:
                        - requestTransformation:
                            transformationTemplate:
                              parseBodyBehavior: DontParse
                              headers: {{x-rewrite-me: {{text: '{dest}'}}}}
                """,
            ),
            # kgateway issue 7693: the destination comes from the path.
            vs(
                "issue",
                "svc.test",
                """
                - matchers: [{prefix: /}]
                  routeAction: {dynamicForwardProxy: {autoHostRewriteHeader: x-destination}}
                  options:
                    stagedTransformations:
                      regular:
                        requestTransforms:
                        - requestTransformation:
                            transformationTemplate:
                              extractors:
                                destination: {header: ':path', regex: '/service/(.*)', subgroup: 1}
                              headers: {x-destination: {text: '{{ destination }}'}}
                """,
            ),
            vs(
                "select",
                "select.test",
                """
                - matchers: [{prefix: /}]
                  routeAction: {dynamicForwardProxy: {}}
                  options:
                    stagedTransformations:
                      early:
                        requestTransforms:
                        - matcher: {prefix: /echo, headers: [{name: x-pick, value: a}]}
                          requestTransformation:
                            transformationTemplate: {headers: {x-which: {text: a}}}
                        - matcher: {prefix: /echo}
                          requestTransformation:
                            transformationTemplate:
                              headers: {x-which: {text: b}, x-stage: {text: early}}
                              headersToAppend: [{key: x-multi, value: {text: two}}]
                              headersToRemove: [x-drop]
                        - matcher: {prefix: /}
                          requestTransformation:
                            transformationTemplate: {headers: {x-which: {text: c}}}
                      regular:
                        requestTransforms:
                        - requestTransformation:
                            transformationTemplate:
                              parseBodyBehavior: DontParse
                              headers: {x-seen-early: {text: '{{ header("x-stage") }}'}}
                """,
            ),
            vs(
                "inherit",
                "inherit.test",
                """
                - matchers: [{prefix: /override}]
                  routeAction: {dynamicForwardProxy: {}}
                  options:
                    prefixRewrite: /echo
                    stagedTransformations:
                      regular:
                        requestTransforms:
                        - requestTransformation:
                            transformationTemplate: {headers: {x-route: {text: r}}}
                - matchers: [{prefix: /inherit}]
                  routeAction: {dynamicForwardProxy: {}}
                  options:
                    prefixRewrite: /echo
                    stagedTransformations:
                      inheritTransformation: true
                      regular:
                        requestTransforms:
                        - matcher: {prefix: /never}
                          requestTransformation:
                            transformationTemplate: {headers: {x-route: {text: r}}}
                - matchers: [{prefix: /}]
                  routeAction: {dynamicForwardProxy: {}}
                """,
                options="""
                stagedTransformations:
                  regular:
                    requestTransforms:
                    - requestTransformation:
                        transformationTemplate: {headers: {x-vhost: {text: v}}}
                """,
            ),
            vs(
                "body",
                "body.test",
                """
                - matchers: [{prefix: /lenient}]
                  routeAction: {dynamicForwardProxy: {}}
                  options:
                    prefixRewrite: /echo
                    stagedTransformations:
                      regular:
                        requestTransforms:
                        - requestTransformation:
                            transformationTemplate:
                              ignoreErrorOnParse: true
                              body: {text: @LENIENT@}
                - matchers: [{prefix: /merge}]
                  routeAction: {dynamicForwardProxy: {}}
                  options:
                    prefixRewrite: /echo
                    stagedTransformations:
                      regular:
                        requestTransforms:
                        - requestTransformation:
                            transformationTemplate:
                              extractors:
                                user.id: {header: x-user, regex: 'u-([0-9]+)', subgroup: 1}
                              mergeExtractorsToBody: {}
                - matchers: [{prefix: /}]
                  routeAction: {dynamicForwardProxy: {}}
                  options:
                    stagedTransformations:
                      regular:
                        requestTransforms:
                        - requestTransformation:
                            transformationTemplate:
                              headers: {x-name: {text: '{{ user.name }}'}}
                              body: {text: '{"greeting": "hello {{ user.name }}"}'}
                """,
            ),
            vs(
                "reroute",
                "reroute.test",
                """
                - matchers: [{prefix: /, headers: [{name: x-go, value: b}]}]
                  directResponseAction: {status: 200, body: route b}
                - matchers: [{prefix: /}]
                  routeAction: {dynamicForwardProxy: {}}
                  options:
                    stagedTransformations:
                      regular:
                        requestTransforms:
                        - clearRouteCache: true
                          requestTransformation:
                            transformationTemplate:
                              parseBodyBehavior: DontParse
                              headers: {x-go: {text: '{{ header("x-want") }}'}}
                """,
            ),
            vs(
                "legacy",
                "legacy.test",
                """
                - matchers: [{prefix: /}]
                  routeAction: {dynamicForwardProxy: {}}
                  options:
                    transformations:
                      requestTransformation:
                        transformationTemplate:
                          parseBodyBehavior: DontParse
                          headers:
                            x-legacy: {text: '{{ header(":method") }} {{ header(":path") }}'}
                      responseTransformation:
                        transformationTemplate:
                          parseBodyBehavior: DontParse
                          headers: {x-legacy-resp: {text: '{{ header(":status") }}'}}
                """,
            ),
            vs(
                "resp",
                "resp.test",
                """
                - matchers: [{prefix: /}]
                  routeAction: {dynamicForwardProxy: {}}
                  options:
                    stagedTransformations:
                      regular:
                        requestTransforms:
                        - matcher: {prefix: /bytes, headers: [{name: x-collect}]}
                          responseTransformation:
                            transformationTemplate:
                              parseBodyBehavior: DontParse
                              body: {text: '{{ length(body()) }} bytes'}
                        responseTransforms:
                        - matchers: [{name: ':status', value: '404'}]
                          responseTransformation:
                            transformationTemplate:
                              parseBodyBehavior: DontParse
                              headers: {x-was: {text: '{{ header(":status") }}'}}
                              body: {text: @NOT_FOUND@}
                        - matchers: [{name: ':status', value: '20[0-9]', regex: true}]
                          responseTransformation:
                            transformationTemplate:
                              parseBodyBehavior: DontParse
                              headers:
                                x-resp: {text: 'for {{ request_header("x-req") }}'}
                                ':status': {text: @TEAPOT@}
                """,
            ),
        ]
    )


dns_server = shared_proxy.dns_server
shared_origin = shared_proxy.shared_origin


@pytest.fixture(scope="module")
def tproxy(
    tmp_path_factory: pytest.TempPathFactory, dns_server: DNSTestServer, shared_origin: OriginServer
) -> Iterator[ProxyProcess]:
    with module_proxy(
        tmp_path_factory, dns_server, "uvloop", config=config(shared_origin.port)
    ) as p:
        yield p


@pytest.fixture
def send(tproxy: ProxyProcess, shared_origin: OriginServer) -> Iterator[Callable[..., RawResponse]]:
    """``send(host, path, headers=None, method="GET", body=b"")``: origin-form, own
    connection, ``Host: host:<origin port>`` (so routes without a rewrite reach the origin)."""

    def request(
        host: str,
        path: str,
        headers: dict[str, str] | list[tuple[str, str]] | None = None,
        method: str = "GET",
        body: bytes = b"",
    ) -> RawResponse:
        extra = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        pairs = [("Host", f"{host}:{shared_origin.port}"), *extra]
        with RawClient("127.0.0.1", tproxy.port) as c:
            return c.request(method, path, pairs, body)

    yield request
    check_alive(tproxy)


def seen_headers(r: RawResponse) -> dict[str, list[str]]:
    assert r.status == 200, (r.status, r.text)
    out: dict[str, list[str]] = {}
    for k, v in r.json()["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


# ---------------------------------------------------------------------------- DFP patterns
def test_blog_template_builds_the_auto_host_rewrite_header(
    send: Callable[..., RawResponse], dns_server: DNSTestServer, shared_origin: OriginServer
) -> None:
    r = send("mypaas.test", "/echo", {"x-mypaas-tenant-id": "tenant-1"})
    h = seen_headers(r)
    assert h["host"] == [f"tenant-1.mypaas.test:{shared_origin.port}"]
    assert h["x-mypaas-tenant-backend"] == [f"tenant-1.mypaas.test:{shared_origin.port}"]
    assert "tenant-1.mypaas.test" in {q.name.rstrip(".") for q in dns_server.queries}


def test_gloo_e2e_early_transform_sets_x_rewrite_me_and_streams_the_body(
    send: Callable[..., RawResponse], shared_origin: OriginServer
) -> None:
    body = b"not json at all " * 1000
    r = send("e2e.test", "/upload", method="POST", body=body)
    assert r.status == 200, r.text
    assert r.json()["length"] == len(body)
    assert r.json()["sha256"] == hashlib.sha256(body).hexdigest()
    assert shared_origin.requests[-1].header("host") == f"dest.test:{shared_origin.port}"


def test_user_issue_extractor_on_path_routes_to_the_extracted_host(
    send: Callable[..., RawResponse], shared_origin: OriginServer
) -> None:
    dest = f"from-path.test:{shared_origin.port}"
    r = send("svc.test", f"/service/{dest}")
    assert r.status == 404  # the origin has no /service/...: the request reached it
    seen = shared_origin.requests[-1]
    assert seen.header("host") == dest
    assert seen.header("x-destination") == dest


# ---------------------------------------------------------------------------- selection, order
def test_only_the_first_matching_request_transform_runs(send: Callable[..., RawResponse]) -> None:
    assert seen_headers(send("select.test", "/echo", {"x-pick": "a"}))["x-which"] == ["a"]
    h = seen_headers(
        send("select.test", "/echo", [("x-which", "old"), ("x-multi", "one"), ("x-drop", "1")])
    )
    assert h["x-which"] == ["b"]  # headers replace
    assert h["x-multi"] == ["one", "two"]  # headersToAppend adds
    assert "x-drop" not in h  # headersToRemove
    r = send("select.test", "/other")
    assert r.status == 404


def test_early_runs_before_regular(send: Callable[..., RawResponse]) -> None:
    h = seen_headers(send("select.test", "/echo"))
    assert h["x-seen-early"] == ["early"]


def test_route_overrides_vhost_per_stage_unless_inherit(send: Callable[..., RawResponse]) -> None:
    h = seen_headers(send("inherit.test", "/override"))
    assert h["x-route"] == ["r"] and "x-vhost" not in h
    h = seen_headers(send("inherit.test", "/inherit"))
    assert h["x-vhost"] == ["v"] and "x-route" not in h  # route's did not match, vhost's did
    h = seen_headers(send("inherit.test", "/echo"))
    assert h["x-vhost"] == ["v"]


# ---------------------------------------------------------------------------- bodies
def test_body_template_reads_json_and_sets_content_length(
    send: Callable[..., RawResponse], shared_origin: OriginServer
) -> None:
    payload = json.dumps({"user": {"name": "ann"}}).encode()
    r = send("body.test", "/upload", {"content-type": "application/json"}, "POST", payload)
    assert r.status == 200, r.text
    expected = b'{"greeting": "hello ann"}'
    assert r.json()["length"] == len(expected)
    assert r.json()["sha256"] == hashlib.sha256(expected).hexdigest()
    seen = shared_origin.requests[-1]
    assert seen.header("x-name") == "ann"
    assert seen.header("content-length") == str(len(expected))


def test_chunked_body_is_collected_and_reframed(
    tproxy: ProxyProcess, shared_origin: OriginServer
) -> None:
    payload = json.dumps({"user": {"name": "bo"}}).encode()
    with RawClient("127.0.0.1", tproxy.port) as c:
        c.send_request(
            "POST",
            "/upload",
            [("Host", f"body.test:{shared_origin.port}"), ("Transfer-Encoding", "chunked")],
            encode_chunked(payload, chunk_size=5),
        )
        r = c.recv_response()
    assert r.status == 200, r.text
    assert r.json()["length"] == len(b'{"greeting": "hello bo"}')
    assert r.json()["chunked"] is False


def test_bad_json_is_400_unless_ignore_error_on_parse(send: Callable[..., RawResponse]) -> None:
    r = send("body.test", "/upload", method="POST", body=b"{not json")
    assert r.status == 400
    assert r.text.startswith("bad request: body is not valid JSON")
    r = send("body.test", "/lenient", method="POST", body=b"{not json")
    assert r.json()["body_length"] == len(b"raw: {not json")
    r = send("body.test", "/lenient", method="POST", body=b'{"a": 1}')
    assert r.json()["body_length"] == len(b"json")


def test_missing_variable_is_400_with_the_reason(send: Callable[..., RawResponse]) -> None:
    r = send("body.test", "/upload", method="POST", body=b'{"other": 1}')
    assert r.status == 400
    assert "variable 'user.name' not found" in r.text


def test_merge_extractors_to_body(send: Callable[..., RawResponse]) -> None:
    r = send("body.test", "/merge", {"x-user": "u-42"}, "POST", b'{"keep": true}')
    expected = b'{"keep":true,"user":{"id":"42"}}'
    assert r.json()["body_sha256"] == hashlib.sha256(expected).hexdigest()


def test_body_over_the_limit_is_413(
    tproxy: ProxyProcess, shared_origin: OriginServer, send: Callable[..., RawResponse]
) -> None:
    big = b"x" * (1024 * 1024 + 1)
    r = send("body.test", "/upload", method="POST", body=big)
    assert (r.status, r.text) == (413, "Payload Too Large")
    # Chunked (no length known up front): collected until the limit, then 413.
    with RawClient("127.0.0.1", tproxy.port) as c:
        c.send_request(
            "POST",
            "/upload",
            [("Host", f"body.test:{shared_origin.port}"), ("Transfer-Encoding", "chunked")],
            encode_chunked(big, chunk_size=65536),
        )
        r = c.recv_response()
    assert (r.status, r.text) == (413, "Payload Too Large")


# ---------------------------------------------------------------------------- responses
def test_response_body_transform_with_status_condition(send: Callable[..., RawResponse]) -> None:
    r = send("resp.test", "/status/404")
    assert (r.status, r.text) == (404, "not here")
    assert r.header("x-was") == "404"
    assert r.header("content-length") == str(len("not here"))


def test_header_only_response_transform_streams_the_body(send: Callable[..., RawResponse]) -> None:
    r = send("resp.test", "/bytes/100000", {"x-req": "me"})
    assert r.status == 200
    assert len(r.body) == 100000
    assert r.header("x-resp") == "for me"
    r = send("resp.test", "/echo", {"x-teapot": "1"})
    assert r.status == 418
    r = send("resp.test", "/status/500")
    assert r.status == 500 and r.header("x-resp") is None  # no response transform matched


# ---------------------------------------------------------------------------- route cache, legacy
def test_clear_route_cache_routes_the_transformed_request_again(
    send: Callable[..., RawResponse],
) -> None:
    r = send("reroute.test", "/echo", {"x-want": "b"})
    assert (r.status, r.text) == (200, "route b")
    h = seen_headers(send("reroute.test", "/echo"))  # x-go rendered empty: removed, same route
    assert "x-go" not in h


def test_legacy_transformations_apply_both_ways(send: Callable[..., RawResponse]) -> None:
    r = send("legacy.test", "/echo?q=1")
    assert seen_headers(r)["x-legacy"] == ["GET /echo?q=1"]
    assert r.header("x-legacy-resp") == "200"


def test_expect_100_continue_while_collecting(
    tproxy: ProxyProcess, shared_origin: OriginServer
) -> None:
    """The proxy answers 100-continue itself when it must collect the body first: the
    client (which waits for it before sending) gets it, then the transformed answer."""
    payload = json.dumps({"user": {"name": "cy"}}).encode()
    with RawClient("127.0.0.1", tproxy.port) as c:
        c.send(
            (
                f"POST /upload HTTP/1.1\r\nHost: body.test:{shared_origin.port}\r\n"
                f"Expect: 100-continue\r\nContent-Length: {len(payload)}\r\n\r\n"
            ).encode()
        )
        interim = c.recv_response()
        assert interim.status == 100
        c.send(payload)
        r = c.recv_response()
    assert r.status == 200, r.text
    assert r.json()["length"] == len(b'{"greeting": "hello cy"}')


def test_request_matched_response_transformation_collects_the_body(
    send: Callable[..., RawResponse],
) -> None:
    r = send("resp.test", "/bytes/5000", {"x-collect": "1"})
    assert (r.status, r.text) == (200, "5000 bytes")
    assert r.header("x-resp") is None  # the request's own response transformation won
    r = send("resp.test", "/bytes/1100000", {"x-collect": "1"})
    assert (r.status, r.text) == (500, "Internal Server Error")  # past the buffer limit


def test_head_response_keeps_its_length_and_gets_header_transforms(
    send: Callable[..., RawResponse],
) -> None:
    r = send("resp.test", "/status/404", method="HEAD")
    assert r.status == 404 and r.body == b""
    assert r.header("x-was") == "404"
    assert r.header("content-length") == str(len("status 404\n"))


def test_stats_count_transformations_and_errors(
    tproxy: ProxyProcess, send: Callable[..., RawResponse]
) -> None:
    send("body.test", "/upload", method="POST", body=b"{broken")
    send("select.test", "/echo")
    status, body = tproxy.admin_get("/stats")
    assert status == 200
    stats = dict(line.split(": ", 1) for line in body.decode().splitlines() if ": " in line)
    assert int(stats["transformation.regular.request_error"]) >= 1
    assert int(stats["transformation.early.request_header_transformations"]) >= 1
    assert int(stats["transformation.regular.request_body_transformations"]) >= 1
