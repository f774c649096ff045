"""Gloo DLP (data loss prevention): mask response bodies and access-log lines.

Config (reference §8.10): the listener's ``httpGateway.options.dlp`` has rules (a matcher
and actions; the first rule whose matcher matches the request applies; no matcher: prefix
"/"); a virtual host's or route's ``options.dlp`` (route over virtual host) replaces the
listener's entirely. ``enabledFor`` says what is masked: RESPONSE_BODY (default),
ACCESS_LOGS or ALL.

Bodies are masked as they stream (``dlp.masker.StreamMasker``); a route with DLP on bodies
has a body filter, so the stream drops Content-Length and re-frames (chunked to HTTP/1.1
clients, close-delimited to HTTP/1.0). A compressed body cannot be masked (the regexes see
deflate output): like Envoy's DLP, which needs uncompressed bodies, the filter removes
Accept-Encoding from the request so the origin answers in identity; a response that is
encoded anyway is passed through unmasked and counted (``dlp.compressed_passthrough``).

Stats (``http.<listener>.dlp.``): ``<action>.matched`` per action (``<action>.shadowed`` for
shadow actions, which count and change nothing), ``compressed_passthrough``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from dfproxy.config.schema import dlp as schema
from dfproxy.dlp import masker
from dfproxy.filters import CONTINUE, HttpFilter
from dfproxy.policies import BuildContext, Levels, Report
from dfproxy.router import Matcher

if TYPE_CHECKING:
    from dfproxy.access_log import LogEntry
    from dfproxy.stats import Counter
    from dfproxy.stream import Stream

log = logging.getLogger("dfproxy.dlp")

STATE_RULE = "dlp_rule"  # the listener rule chosen for this request (index, or -1: none)
STATE_MASKER = "dlp_masker"  # this response's StreamMasker (None: not masked)

# Access-log fields that come from the request, with the header each carries (None: a
# pseudo-header, which KEYVALUE cannot mask, as in Gloo).
_LOG_FIELDS: tuple[tuple[str, bytes | None], ...] = (
    ("path", None),
    ("authority", None),
    ("user_agent", b"user-agent"),
    ("forwarded_for", b"x-forwarded-for"),
    ("request_id", b"x-request-id"),
)


@dataclass(frozen=True, eq=False)
class CompiledDlp:
    """What one route enforces: ``rules`` in order (a None matcher always matches)."""

    rules: tuple[tuple[Matcher | None, masker.Plan], ...]
    body: bool
    logs: bool


class _Errors:
    """Counts the errors a compile reports, so a broken config compiles to nothing."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.count = 0

    def add(self, where: str, path: str, message: str) -> None:
        self.count += 1
        self.report.add(where, path, message)


def _mask_settings(mask_char: str, percent: schema.Percent | None) -> tuple[bytes, float]:
    char = mask_char.encode("utf-8") or masker.DEFAULT_MASK_CHAR
    return char, masker.DEFAULT_PERCENT if percent is None else percent.value


def _action(
    a: schema.Action, index: int, enabled_for: str, where: str, path: str, errors: _Errors
) -> masker.Action | None:
    t = a.action_type
    if t != "CUSTOM" and a.custom_action is not None:
        errors.add(where, f"{path}.customAction", f"customAction needs actionType CUSTOM, not {t}")
        return None
    if t != "KEYVALUE" and a.key_value_action is not None:
        errors.add(
            where, f"{path}.keyValueAction", f"keyValueAction needs actionType KEYVALUE, not {t}"
        )
        return None
    if t == "KEYVALUE":
        kv = a.key_value_action
        if enabled_for == "RESPONSE_BODY":
            errors.add(
                where,
                f"{path}.actionType",
                "KEYVALUE masks header values in access logs only: set enabledFor to "
                "ACCESS_LOGS or ALL",
            )
            return None
        if kv is None or not kv.key_to_mask:
            errors.add(where, f"{path}.keyValueAction.keyToMask", "KEYVALUE needs keyToMask")
            return None
        if kv.key_to_mask.startswith(":"):
            errors.add(
                where,
                f"{path}.keyValueAction.keyToMask",
                f"pseudo-headers cannot be masked (found: {kv.key_to_mask!r})",
            )
            return None
        char, percent = _mask_settings(kv.mask_char, kv.percent)
        return masker.Action(
            kv.name or f"keyvalue_{kv.key_to_mask.lower()}",
            key=kv.key_to_mask.lower().encode("latin-1"),
            percent=percent,
            table=None if a.shadow else masker.mask_table(char),
        )
    if t != "CUSTOM":
        return masker.predefined_action(t, index, shadow=a.shadow)
    c = a.custom_action
    if c is None or not (c.regex or c.regex_actions):
        errors.add(
            where,
            f"{path}.customAction",
            "a CUSTOM action needs customAction with regexActions (or regex)",
        )
        return None
    char, percent = _mask_settings(c.mask_char, c.percent)
    table = None if a.shadow else masker.mask_table(char)
    # Gloo: the deprecated ``regex`` list first, then ``regexActions``.
    at = f"{path}.customAction"
    sources = [(f"{at}.regex[{k}]", "", r, 0) for k, r in enumerate(c.regex)] + [
        (f"{at}.regexActions[{k}].regex", f"{at}.regexActions[{k}].subgroup", ra.regex, ra.subgroup)
        for k, ra in enumerate(c.regex_actions)
    ]
    rules = []
    for regex_path, subgroup_path, pattern, subgroup in sources:
        try:
            rules.append(masker.custom_rule(pattern, subgroup, index, percent, table))
        except masker.SubgroupError as exc:
            errors.add(where, subgroup_path, str(exc))
        except masker.RegexError as exc:
            errors.add(where, regex_path, f"invalid regular expression: {exc} (found: {pattern!r})")
    if len(rules) != len(sources):
        return None
    return masker.Action(c.name or "custom", tuple(rules))


def _plan(
    actions: Sequence[schema.Action], enabled_for: str, where: str, path: str, errors: _Errors
) -> masker.Plan:
    compiled = []
    for j, a in enumerate(actions):
        got = _action(a, j, enabled_for, where, f"{path}.actions[{j}]", errors)
        if got is not None:
            compiled.append(got)
    return masker.Plan(tuple(compiled))


class DlpPolicy:
    name = "dlp"

    def compile(self, levels: Levels, report: Report) -> CompiledDlp | None:
        errors = _Errors(report)
        route_cfg = getattr(levels.route, "dlp", None)
        vhost_cfg = getattr(levels.vhost, "dlp", None)
        if route_cfg is not None or vhost_cfg is not None:
            # A virtual host's or route's config replaces the listener's entirely.
            if route_cfg is not None:
                cfg, path = route_cfg, f"{levels.route_path}.dlp"
            else:
                cfg, path = vhost_cfg, f"{levels.vhost_path}.dlp"
            plan = _plan(cfg.actions, cfg.enabled_for, levels.vs_where, path, errors)
            return _finish(((None, plan),), cfg.enabled_for, errors)
        lcfg: schema.FilterConfig | None = getattr(levels.listener, "dlp", None)
        if lcfg is None:
            return None
        from dfproxy.config.gloo import _matcher  # the route matcher translation, reused

        base = f"{levels.listener_path}.dlp"
        rules: list[tuple[Matcher | None, masker.Plan]] = []
        for i, rule in enumerate(lcfg.dlp_rules):
            path = f"{base}.dlpRules[{i}]"
            m = rule.matcher
            # No matcher: prefix "/" (Gloo), which every request but CONNECT matches.
            matcher = (
                Matcher(prefix="/")
                if m is None
                else _matcher(m, levels.gateway_where, f"{path}.matcher", cast(Any, errors))
            )
            plan = _plan(rule.actions, lcfg.enabled_for, levels.gateway_where, path, errors)
            rules.append((matcher, plan))
        return _finish(tuple(rules), lcfg.enabled_for, errors)

    def build(self, compiled: CompiledDlp, ctx: BuildContext) -> Sequence[HttpFilter]:
        stats = ctx.runtime.stats
        prefix = f"http.{ctx.listener.name}.dlp."
        counters = tuple(
            tuple(
                stats.counter(f"{prefix}{a.name}.{'shadowed' if _shadow(a) else 'matched'}")
                for a in plan.actions
            )
            for _, plan in compiled.rules
        )
        passthrough = stats.counter(prefix + "compressed_passthrough")
        cls = DlpFilter if compiled.body else DlpLogFilter
        return [cls(compiled, counters, passthrough)]


def _shadow(a: masker.Action) -> bool:
    if a.rules:
        return a.rules[0].table is None
    return a.table is None


def _finish(
    rules: tuple[tuple[Matcher | None, masker.Plan], ...], enabled_for: str, errors: _Errors
) -> CompiledDlp | None:
    if errors.count or not any(plan.actions for _, plan in rules):
        return None
    return CompiledDlp(
        rules=rules,
        # Only KEYVALUE actions: nothing can change a body, so no body filter (no re-framing).
        body=enabled_for in ("RESPONSE_BODY", "ALL") and any(plan.rules for _, plan in rules),
        logs=enabled_for in ("ACCESS_LOGS", "ALL"),
    )


POLICY = DlpPolicy()


class DlpLogFilter(HttpFilter):
    """DLP on access logs only (enabledFor ACCESS_LOGS): no body hooks, so the response is
    framed as it came."""

    name = "dlp"

    def __init__(
        self,
        compiled: CompiledDlp,
        counters: tuple[tuple[Counter, ...], ...],
        passthrough: Counter,
    ) -> None:
        self.rules = compiled.rules
        self.logs = compiled.logs
        self.counters = counters
        self.passthrough = passthrough
        # Access-log values run each action on its own (KEYVALUE actions sit between them).
        self.log_plans = tuple(
            tuple(masker.Plan((a,)) if a.rules else None for a in plan.actions)
            for _, plan in self.rules
        )
        # One rule without a matcher (a route or virtual host config): nothing to choose.
        self.fixed = 0 if len(self.rules) == 1 and self.rules[0][0] is None else -2

    def select(self, stream: Stream) -> int:
        """The index of the rule that applies to this request, or -1 (first match wins)."""
        if self.fixed >= 0:
            return self.fixed
        state = stream.state_dict()
        chosen = state.get(STATE_RULE)
        if isinstance(chosen, int):
            return chosen
        chosen = -1
        for i, (m, _) in enumerate(self.rules):
            if m is None or m.matches(stream):
                chosen = i
                break
        state[STATE_RULE] = chosen
        return chosen

    def on_log(self, stream: Stream, entry: LogEntry) -> None:
        if not self.logs:
            return
        i = self.select(stream)
        if i < 0:
            return
        plan = self.rules[i][1]
        singles = self.log_plans[i]
        counters = self.counters[i]
        for attr, header in _LOG_FIELDS:
            value = getattr(entry, attr)
            if value:
                setattr(entry, attr, mask_log_value(plan, singles, header, value, counters))


def mask_log_value(
    plan: masker.Plan,
    singles: Sequence[masker.Plan | None],
    header: bytes | None,
    value: str,
    counters: Sequence[Counter] | None = None,
) -> str:
    """One access-log field through the plan's actions in order (``singles``: each
    action's own plan): regex actions mask matches; a KEYVALUE action masks the whole
    value of its header."""
    data = value.encode("latin-1", "replace")
    for j, a in enumerate(plan.actions):
        single = singles[j]
        if single is not None:
            data = masker.mask_text(single, data, counters)
        elif a.key == header and header is not None:
            if counters is not None:
                counters[j].value += 1
            if a.table is not None:
                data = masker.mask_whole(data, a.percent, a.table)
    return data.decode("latin-1")


class DlpFilter(DlpLogFilter):
    """DLP on response bodies (and access logs with enabledFor ALL)."""

    def on_request_headers(self, stream: Stream) -> int:
        if self.select(stream) >= 0:
            # Masking needs the body in identity encoding (Envoy's DLP alike).
            stream.remove_request_header(b"accept-encoding")
        return CONTINUE

    def on_response_headers(self, stream: Stream) -> int:
        i = self.select(stream)
        if i < 0:
            return CONTINUE
        state = stream.state_dict()
        for name, value in stream.resp_headers or ():
            if name.lower() == b"content-encoding" and value.strip().lower() != b"identity":
                self.passthrough.value += 1
                # The path is not logged: it may hold the very data DLP protects.
                log.warning(
                    "dlp: a %s-encoded response from %s passed through unmasked",
                    value.decode("latin-1"),
                    stream.host_header.decode("latin-1"),
                )
                state[STATE_MASKER] = None
                return CONTINUE
        state[STATE_MASKER] = masker.StreamMasker(self.rules[i][1], self.counters[i])
        return CONTINUE

    def on_response_body(self, stream: Stream, data: bytes, end: bool) -> bytes:
        state = stream.filter_state
        m = state.get(STATE_MASKER) if state is not None else None
        if m is None:
            return data
        return cast(masker.StreamMasker, m).feed(data, end)
