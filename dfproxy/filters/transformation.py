"""Gloo staged transformations as two filters: EARLY (before JWT) and REGULAR (after rate
limits, before the dynamic forward proxy, so a header built here can be the route's
``autoHostRewriteHeader``). Reference §8.8; envoy-gloo ``transformation_filter``.

Per stage, the route's transforms replace the virtual host's, unless the route sets
``inheritTransformation`` (then the route's come first and the virtual host's after). Only
the first request transform whose matcher matches runs; its ``responseTransformation``
applies to the response, else the first matching ``responseTransforms`` entry. A
transformation that reads or replaces the body waits for the whole body (bounded by
BODY_LIMIT: 413 past it); one that does not (or ``passthrough``) runs on the headers.
A route without transformations has no filter at all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from dfproxy.filters import CONTINUE, STOP, HttpFilter
from dfproxy.filters.body_buffer import (
    BODY_LIMIT,
    collect_request_body,
    collect_response_body,
    set_request_body,
)
from dfproxy.stats import Counter
from dfproxy.stream import FILTERING
from dfproxy.transformation.messages import RequestMessage, ResponseMessage
from dfproxy.transformation.transformer import (
    CompiledTransformation,
    RenderError,
    compile_regex,
    compile_template,
)

if TYPE_CHECKING:
    from dfproxy.policies import BuildContext, Levels, Report
    from dfproxy.router import Matcher
    from dfproxy.stream import Stream

log = logging.getLogger("dfproxy.transformation")

# Headers that carry the message framing: a template may not set them (the proxy frames).
_FRAMING = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te"}
)
ERROR_DETAILS = "transformation_filter_error"
REROUTED = "transformation.rerouted"  # state_dict: clearRouteCache chose a new route already


@dataclass(frozen=True)
class RequestEntry:
    matcher: Matcher | None
    request: CompiledTransformation | None
    response: CompiledTransformation | None
    clear_route_cache: bool = False


class ResponseHeaderMatch:
    """Gloo HeaderMatcher over response headers (``:status`` included); RE2 for regexes."""

    __slots__ = ("name", "value", "regex", "invert")

    def __init__(self, name: str, value: str, regex: Any, invert: bool) -> None:
        self.name = name.lower()
        self.value = value
        self.regex = regex
        self.invert = invert

    def matches(self, msg: ResponseMessage) -> bool:
        got = msg.get_all(self.name)
        if got is None:
            return self.invert and not self.value and self.regex is None
        if not self.value and self.regex is None:
            return not self.invert
        result = (
            self.regex.fullmatch(got) is not None if self.regex is not None else got == self.value
        )
        return result != self.invert


@dataclass(frozen=True)
class ResponseEntry:
    matchers: tuple[ResponseHeaderMatch, ...]
    details: str | None
    response: CompiledTransformation | None

    def matches(self, stream: Stream, msg: ResponseMessage) -> bool:
        if self.details is not None and self.details != (stream.details or "via_upstream"):
            return False
        return all(m.matches(msg) for m in self.matchers)


@dataclass(frozen=True)
class CompiledStage:
    stage: str
    request: tuple[RequestEntry, ...]
    response: tuple[ResponseEntry, ...]


# -- the filter ---------------------------------------------------------------------------


class TransformationFilter(HttpFilter):
    """One stage's transformations on one route."""

    def __init__(self, stage: CompiledStage, counters: dict[str, Counter]) -> None:
        self.stage = stage
        self.name = f"io.solo.transformation.{stage.stage}"
        self.key = f"transformation.{stage.stage}.response"  # state_dict: the chosen response one
        self.st = counters

    def on_request_headers(self, stream: Stream) -> int:
        if stream.is_connect:
            return CONTINUE
        entry = None
        for e in self.stage.request:
            if e.matcher is None or e.matcher.matches(stream):
                entry = e
                break
        if entry is None:
            return CONTINUE
        if entry.response is not None:
            stream.state_dict()[self.key] = entry.response
        t = entry.request
        if t is None:
            return CONTINUE
        if not t.needs_body:
            self.st["request_header_transformations"].value += 1
            if not self._transform(stream, t, b"", False):
                return STOP
            return STOP if entry.clear_route_cache and self._reroute(stream) else CONTINUE
        length = stream.req.content_length
        if length is not None and length > BODY_LIMIT:
            self._too_large(stream)
            return STOP
        body = collect_request_body(
            stream, BODY_LIMIT, lambda b: self._body_arrived(stream, entry, t, b)
        )
        if body is None:
            return STOP  # _body_arrived resumes the chain
        self.st["request_body_transformations"].value += 1
        if not self._transform(stream, t, body, True):
            return STOP
        return STOP if entry.clear_route_cache and self._reroute(stream) else CONTINUE

    def _reroute(self, stream: Stream) -> bool:
        """clearRouteCache: choose the route again for the transformed request. Another
        route runs its own filter chain from the start (Envoy's later filters would see the
        new route); True when this chain must stop. Once per request: a transformation on
        the new route that clears the cache again keeps that route."""
        state = stream.state_dict()
        if state.get(REROUTED):
            return False
        old, old_matcher = stream.route, stream.matcher
        new = stream.conn.listener.routes.select(stream)
        if new is old:
            stream.matcher = old_matcher
            return False
        state[REROUTED] = True
        stream.begin()  # routes again (404 if nothing matches) and runs the new chain
        return True

    def _body_arrived(
        self, stream: Stream, entry: RequestEntry, t: CompiledTransformation, body: bytes | None
    ) -> None:
        if stream.state != FILTERING:
            return  # answered or gone meanwhile
        if body is None:
            self._too_large(stream)
            return
        self.st["request_body_transformations"].value += 1
        if self._transform(stream, t, body, True) and not (
            entry.clear_route_cache and self._reroute(stream)
        ):
            stream.resume_filters()

    def _transform(
        self, stream: Stream, t: CompiledTransformation, body: bytes, collected: bool
    ) -> bool:
        msg = RequestMessage(stream)
        try:
            new = t.run(msg, body, stream.state_dict() if t.metadata else None)
        except RenderError as exc:
            self.st["request_error"].value += 1
            stream.details = ERROR_DETAILS
            log.info(
                "%s %s -> 400 transformation (%s): %s",
                stream.method.decode("latin-1"),
                stream.target.decode("latin-1"),
                self.stage.stage,
                exc,
            )
            stream.send_local_reply(400, f"bad request: {exc}".encode("utf-8", "replace"))
            return False
        if new is not None:
            set_request_body(stream, new)
            if not new:
                msg.remove("content-type")  # envoy-gloo: an emptied body has no type
        elif collected and (stream.req.content_length is not None or stream.req.chunked):
            set_request_body(stream, body)  # the body as it came, re-framed
        return True

    def _too_large(self, stream: Stream) -> None:
        # Envoy HCM: a buffered request past the limit is a 413 (request_payload_too_large).
        self.st["request_error"].value += 1
        stream.details = "request_payload_too_large"
        log.info(
            "%s %s -> 413 request body over %d bytes (transformation)",
            stream.method.decode("latin-1"),
            stream.target.decode("latin-1"),
            BODY_LIMIT,
        )
        stream.send_local_reply(413, b"Payload Too Large")


class ResponseTransformationFilter(TransformationFilter):
    """A stage that also transforms responses. A separate class: the stream skips every
    response hook on a route whose filters do not implement one (Route.plain_response)."""

    def on_response_headers(self, stream: Stream) -> int:
        state = stream.filter_state
        t = cast("CompiledTransformation | None", state.get(self.key) if state else None)
        msg = ResponseMessage(stream)  # the response matchers read it too
        if t is None:
            for e in self.stage.response:
                if e.matches(stream, msg):
                    t = e.response
                    break
            if t is None:
                return CONTINUE
        no_body = stream.method == b"HEAD" or stream.resp_status in (204, 304)
        if t.needs_body and not no_body:
            collect_response_body(stream, BODY_LIMIT, lambda s, b: self._respond(s, t, b))
            return CONTINUE
        self.st["response_header_transformations"].value += 1
        try:
            t.run(msg, b"", None)
        except RenderError as exc:
            error = self._response_error(stream, exc)
            collect_response_body(stream, BODY_LIMIT, lambda s, b: error)
        return CONTINUE

    def _respond(self, stream: Stream, t: CompiledTransformation, body: bytes) -> bytes:
        self.st["response_body_transformations"].value += 1
        msg = ResponseMessage(stream)
        try:
            new = t.run(msg, body, stream.state_dict() if t.metadata else None)
        except RenderError as exc:
            return self._response_error(stream, exc)
        if new is None:
            return body
        if not new:
            msg.remove("content-type")
        return new

    def _response_error(self, stream: Stream, exc: RenderError) -> bytes:
        # envoy-gloo responseError: the status becomes 400 and the body says why.
        self.st["response_error"].value += 1
        stream.details = ERROR_DETAILS
        log.info("response transformation (%s) failed: %s", self.stage.stage, exc)
        stream.resp_status = 400
        ResponseMessage(stream).remove("content-type")
        return f"bad request: {exc}".encode("utf-8", "replace")


# -- the policy: config compile and build ----------------------------------------------------

_STATS = (
    "request_header_transformations",
    "request_body_transformations",
    "response_header_transformations",
    "response_body_transformations",
    "request_error",
    "response_error",
)


class TransformationPolicy:
    """One stage of ``stagedTransformations`` (the older ``transformations`` is regular)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.name = f"transformation.{stage}"

    def compile(self, levels: Levels, report: Report) -> CompiledStage | None:
        where = levels.vs_where
        route_entries = self._level(levels.route, levels.route_path, where, report)
        vhost_entries = self._level(levels.vhost, levels.vhost_path, where, report)
        staged = getattr(levels.route, "staged_transformations", None)
        if route_entries is not None:
            entries = route_entries[0], route_entries[1]
            if staged is not None and staged.inherit_transformation and vhost_entries:
                entries = entries[0] + vhost_entries[0], entries[1] + vhost_entries[1]
        elif vhost_entries is not None:
            entries = vhost_entries
        else:
            return None
        if not entries[0] and not entries[1]:
            return None
        return CompiledStage(self.stage, tuple(entries[0]), tuple(entries[1]))

    def _level(
        self, options: Any, base: str, where: str, report: Report
    ) -> tuple[list[RequestEntry], list[ResponseEntry]] | None:
        """This stage's entries at one level (virtual host or route), or None if unset."""
        if options is None:
            return None
        staged = getattr(options, "staged_transformations", None)
        legacy = getattr(options, "transformations", None)
        escape = bool(staged.escape_characters) if staged is not None else False
        stage = getattr(staged, self.stage, None) if staged is not None else None
        if self.stage == "regular" and legacy is not None:
            if stage is not None:
                report.add(
                    where,
                    f"{base}.transformations",
                    "set transformations or stagedTransformations.regular, not both",
                )
                return None
            return self._legacy(legacy, f"{base}.transformations", where, report)
        if stage is None:
            return None
        path = f"{base}.stagedTransformations.{self.stage}"
        requests: list[RequestEntry] = []
        for i, rt in enumerate(stage.request_transforms):
            p = f"{path}.requestTransforms[{i}]"
            matcher = None
            if rt.matcher is not None:
                from dfproxy.config.gloo import _matcher  # the route matcher, same semantics

                matcher = _matcher(rt.matcher, where, f"{p}.matcher", cast(Any, report))
            requests.append(
                RequestEntry(
                    matcher,
                    self._one(
                        rt.request_transformation,
                        f"{p}.requestTransformation",
                        escape,
                        where,
                        report,
                    ),
                    self._one(
                        rt.response_transformation,
                        f"{p}.responseTransformation",
                        escape,
                        where,
                        report,
                    ),
                    rt.clear_route_cache,
                )
            )
        responses: list[ResponseEntry] = []
        for i, rm in enumerate(stage.response_transforms):
            p = f"{path}.responseTransforms[{i}]"
            matchers = []
            for j, h in enumerate(rm.matchers):
                regex = None
                if h.regex:
                    try:
                        regex = compile_regex(h.value)
                    except ValueError as exc:
                        report.add(where, f"{p}.matchers[{j}].value", f"{exc} (found: {h.value!r})")
                        continue
                matchers.append(ResponseHeaderMatch(h.name, h.value, regex, h.invert_match))
            responses.append(
                ResponseEntry(
                    tuple(matchers),
                    rm.response_code_details,
                    self._one(
                        rm.response_transformation,
                        f"{p}.responseTransformation",
                        escape,
                        where,
                        report,
                    ),
                )
            )
        return requests, responses

    def _legacy(
        self, legacy: Any, path: str, where: str, report: Report
    ) -> tuple[list[RequestEntry], list[ResponseEntry]]:
        request = self._one(
            legacy.request_transformation, f"{path}.requestTransformation", False, where, report
        )
        response = self._one(
            legacy.response_transformation, f"{path}.responseTransformation", False, where, report
        )
        entry = RequestEntry(None, request, response, legacy.clear_route_cache)
        return ([entry] if request is not None or response is not None else []), []

    def _one(
        self, t: Any, path: str, escape: bool, where: str, report: Report
    ) -> CompiledTransformation | None:
        if t is None or t.transformation_template is None:
            return None
        base = f"{path}.transformationTemplate"
        template = t.transformation_template
        bad = False
        for i, name in [(n, n) for n in template.headers] + [
            (f"[{i}]", h.key) for i, h in enumerate(template.headers_to_append)
        ]:
            if name.lower() in _FRAMING:
                sub = f"headers.{i}" if not i.startswith("[") else f"headersToAppend{i}.key"
                report.add(
                    where, f"{base}.{sub}", f"{name} carries the message framing; the proxy sets it"
                )
                bad = True
        compiled = compile_template(
            template, escape, lambda sub, msg: report.add(where, f"{base}.{sub}", msg)
        )
        return None if bad else compiled

    def build(self, compiled: CompiledStage, ctx: BuildContext) -> Sequence[HttpFilter]:
        stats = ctx.runtime.stats
        prefix = f"transformation.{self.stage}."
        counters = {n: stats.counter(prefix + n) for n in _STATS}
        responds = bool(compiled.response) or any(e.response for e in compiled.request)
        cls = ResponseTransformationFilter if responds else TransformationFilter
        return [cls(compiled, counters)]


EARLY = TransformationPolicy("early")
REGULAR = TransformationPolicy("regular")
