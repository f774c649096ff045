"""DLP masking, pure: compiled actions, one-shot masking, and a streaming masker.

Masking follows Gloo's documented examples (reference §8.10): ``round(len × percent)``
positions from the start of the match (or of its subgroup) are masked, ``std::round``
(half away from zero), the tail is kept; separators inside the masked prefix are kept
(``123-45-6789`` -> ``XXX-XX-X789``, ``test-value`` at 100% -> ``****-*****``), the reference's
inference; we keep ``-`` and space, the separators the card and SSN regexes accept.

Regex engine: RE2 (google-re2) in Latin-1 mode, so positions and lengths are bytes, as in
Envoy's C++ filter, and matching is linear-time whatever the custom regex. bench/dlp.py
(SSN + ALL_CREDIT_CARDS, 14 regexes; docs/dlp.md has the table): Python ``re`` about 2 MB/s,
RE2 one regex after another about 40 MB/s, RE2 behind the prefilter of ``Plan`` 230-550 MB/s.

Streaming (``StreamMasker``): actions apply in order, each on the previous one's output, as
if the whole body had been masked at once. Each regex (a *rule*) has a scan position in one
shared buffer; a rule commits a match only when every byte that could change its decision
has arrived (the match starts at least ``width`` bytes before the data the rule may read),
so a match split across chunks is found whole. Rule ``i`` reads only what rule ``i-1`` has
finished, and the prefix every rule has finished is sent. What stays buffered is at most the
sum of the rules' widths, plus one byte of context for the ``(?:^|\\D)`` boundary (RE2 sees
the byte before the scan start, and ``^`` does not match there).
"""

from __future__ import annotations

import bisect
import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dfproxy.dlp import patterns

# google-re2 ships no type information: both halves are typed Any here.
re2: Any = importlib.import_module("re2")
_re2: Any = importlib.import_module("re2._re2")
_UNANCHORED = _re2.RE2.Anchor.UNANCHORED
_ANCHORED = _re2.RE2.Anchor.ANCHOR_START

# A regex whose matches are unbounded (``[^"]*``) is decided within this many bytes: a
# match still running at the window's edge is masked up to there. Bounds what a CUSTOM
# regex holds back while streaming.
UNBOUNDED_MATCH_WINDOW = 4096
DEFAULT_MASK_CHAR = b"X"
DEFAULT_PERCENT = 75.0
KEPT_SEPARATORS = b"- "
# Rules whose matches are at most this long go through the prefilter, which visits every
# position where some match starts and reads up to the longest match from there; a longer
# (custom) rule searches on its own, so dense input costs at most this factor.
PREFILTER_MAX_WIDTH = 64


def _options() -> Any:
    opts = re2.Options()
    opts.encoding = re2.Options.Encoding.LATIN1
    opts.log_errors = False
    return opts


class RegexError(ValueError):
    """A regex RE2 refuses (the message is RE2's)."""


class SubgroupError(RegexError):
    """A regexAction's subgroup the regex does not have."""


def compile_regex(pattern: str) -> Any:
    """An RE2 program for ``pattern`` (UTF-8 bytes read as Latin-1); raises RegexError."""
    prog = _re2.RE2(pattern.encode("utf-8"), _options())
    if not prog.ok():
        raise RegexError(prog.error().decode("utf-8", "replace"))
    return prog


def mask_table(mask_char: bytes) -> bytes:
    """A ``bytes.translate`` table: every byte becomes ``mask_char`` but the separators."""
    table = bytearray(mask_char * 256)
    for b in KEPT_SEPARATORS:
        table[b] = b
    return bytes(table)


def masked_length(length: int, percent: float) -> int:
    """How many leading bytes of a ``length``-byte match are masked: std::round."""
    return int(length * percent / 100.0 + 0.5)


def mask_span(buf: bytearray, start: int, end: int, percent: float, table: bytes) -> None:
    """Mask the leading ``percent`` of ``buf[start:end]`` in place (length kept)."""
    n = masked_length(end - start, percent)
    if n > 0:
        stop = start + n
        buf[start:stop] = buf[start:stop].translate(table)


@dataclass(frozen=True, eq=False)
class Rule:
    """One regex of an action. ``groups``: the groups to mask, the first that took part
    (``(0,)``: the whole match). ``table`` None: shadow (count only)."""

    source: bytes  # the pattern as RE2 compiled it (for the prefilter Set)
    prog: Any
    groups: tuple[int, ...]
    width: int  # the longest match (UNBOUNDED_MATCH_WINDOW when unbounded)
    percent: float
    table: bytes | None
    action: int
    bounded: bool = True


@dataclass(frozen=True, eq=False)
class Action:
    """A compiled DLP action: its rules (regex actions) or its header (KEYVALUE)."""

    name: str
    rules: tuple[Rule, ...] = ()
    key: bytes | None = None  # KEYVALUE: lower-case header name
    percent: float = DEFAULT_PERCENT
    table: bytes | None = None  # KEYVALUE mask (None: shadow)


@dataclass(frozen=True, eq=False)
class Plan:
    """The actions of one DLP config, in order, ready to run.

    The prefilter finds where matches can start: one RE2 search for the alternation of
    every short bounded rule enumerates the positions where any of them matches, and an anchored
    RE2 Set at each such position tells which rules match there. A rule then tries only
    its own candidate positions, so a body is read about once whatever the number of rules.
    """

    actions: tuple[Action, ...]
    rules: tuple[Rule, ...] = field(init=False)
    carry: int = field(init=False)  # the most a stream holds back (bytes)
    _any: Any = field(init=False)  # alternation of the bounded rules (no captures)
    _at: Any = field(init=False)  # anchored Set of the bounded rules
    _bounded: tuple[int, ...] = field(init=False)  # Set index -> rule index
    searched: tuple[bool, ...] = field(init=False)  # per rule: searches on its own
    _reach: int = field(init=False)

    def __post_init__(self) -> None:
        rules = tuple(r for a in self.actions for r in a.rules)
        bounded = tuple(
            i for i, r in enumerate(rules) if r.bounded and r.width <= PREFILTER_MAX_WIDTH
        )
        set_ = self_any = None
        if bounded:
            opts = _options()
            opts.never_capture = True
            alternation = b"|".join(b"(?:" + rules[i].source + b")" for i in bounded)
            self_any = _re2.RE2(alternation, opts)
            set_ = _re2.Set(_re2.RE2.Anchor.ANCHOR_START, opts)
            for i in bounded:
                set_.Add(rules[i].source)
            set_.Compile()
        for name, value in (
            ("rules", rules),
            ("carry", sum(r.width for r in rules) + 1),
            ("_any", self_any),
            ("_at", set_),
            ("_bounded", bounded),
            ("searched", tuple(i not in bounded for i in range(len(rules)))),
            ("_reach", max((rules[i].width for i in bounded), default=0) + 1),
        ):
            object.__setattr__(self, name, value)

    def candidates(
        self, buf: bytearray, lo: int, hi: int, out: dict[int, list[int]] | None = None
    ) -> dict[int, list[int]]:
        """For each prefiltered rule, the positions in ``buf[lo:hi]`` where one of its matches
        may start (ascending; a superset: each is checked by the rule's own match).

        Every start of a match of any bounded rule is found: the alternation's search from
        ``p`` returns the leftmost start at or after ``p`` where some rule matches, and the
        search goes on from the next byte. ``out``: merge into it (kept sorted)."""
        merge = out is not None
        if out is None:
            out = {}
        if self._any is None:
            return out
        search = self._any.Match
        at = self._at.Match
        reach = self._reach
        bounded = self._bounded
        pos = lo
        with memoryview(buf) as view:
            while pos < hi:
                s = search(_UNANCHORED, buf, pos, hi)[0][0]
                if s < 0:
                    break
                found = at(view[s : s + reach])
                if found:
                    for j in found:
                        i = bounded[j]
                        got = out.get(i)
                        if got is None:
                            out[i] = [s]
                        elif not merge or got[-1] < s:
                            got.append(s)
                        else:
                            at_ = bisect.bisect_left(got, s)
                            if got[at_] != s:
                                got.insert(at_, s)
                pos = s + 1
        return out

    def recheck(
        self, buf: bytearray, spans: Sequence[tuple[int, int]], out: dict[int, list[int]]
    ) -> None:
        """Masking ``spans`` may make a later rule match there (its input is the masked
        text): add the candidates of matches that overlap them."""
        reach = self._reach
        lo, hi = 0, -1  # the window being gathered (none yet)
        for s, e in spans:  # ascending: one search over each run of nearby spans
            if s - reach > hi:
                if hi > lo:
                    self.candidates(buf, lo, hi, out)
                lo = max(0, s - reach)
            hi = min(len(buf), e + reach)
        if hi > lo:
            self.candidates(buf, lo, hi, out)


class CounterLike(Protocol):
    value: int


def _scan(
    rule: Rule,
    buf: bytearray,
    start: int,
    limit: int,
    final: bool,
    cands: list[int] | None,
    counters: Sequence[CounterLike] | None,
    masked: list[tuple[int, int]],
) -> int:
    """Run one rule over ``buf[start:limit]``; returns the position it has finished.

    Not ``final``: a match is committed only if it starts before ``limit - width`` (so all
    it could depend on is there); scanning stops at the first later match, which is found
    again, whole, once more data has come. A prefiltered rule tries only its candidate
    starts (``cands``), anchored, each within its longest match; others search."""
    match = rule.prog.Match
    width = rule.width
    safe = limit + 1 if final else limit - width
    pos = last = start
    b = 0
    n = len(cands) if cands is not None else 0
    while pos <= limit:
        if cands is not None:
            while b < n and cands[b] < pos:
                b += 1
            if b == n or cands[b] >= safe:
                break
            c = cands[b]
            b += 1
            end = c + width + 1
            spans = match(_ANCHORED, buf, c, end if end < limit else limit)
            s, e = spans[0]
            if s < 0:
                continue
        else:
            spans = match(_UNANCHORED, buf, pos, limit)
            s, e = spans[0]
            if s < 0 or s >= safe:
                break
        if e > s:
            if counters is not None:
                counters[rule.action].value += 1
            table = rule.table
            if table is not None:
                for g in rule.groups:
                    gs, ge = spans[g]
                    if gs >= 0:
                        mask_span(buf, gs, ge, rule.percent, table)
                        masked.append((gs, ge))
                        break
        last = e
        pos = e if e > s else e + 1
    return limit if final else max(last, safe)


class StreamMasker:
    """Masks one body as it streams: ``feed`` each chunk, ``end=True`` with the last."""

    __slots__ = ("plan", "counters", "buf", "ctx", "pos")

    def __init__(self, plan: Plan, counters: Sequence[CounterLike] | None = None) -> None:
        self.plan = plan
        self.counters = counters
        self.buf = bytearray()
        self.ctx = 0  # 1 once buf[0] is the byte before the unsent data (context only)
        self.pos = [0] * len(plan.rules)

    @property
    def held(self) -> int:
        """Bytes received and not yet sent."""
        return len(self.buf) - self.ctx

    def feed(self, data: bytes, end: bool = False) -> bytes:
        """Mask ``data`` (the next piece of the body); returns what can be sent now."""
        buf = self.buf
        if data:
            buf += data
        plan = self.plan
        limit = len(buf)
        pos = self.pos
        lo = min(pos, default=limit)
        cands = plan.candidates(buf, lo, limit) if limit > self.ctx else {}
        searched = plan.searched
        for i, rule in enumerate(plan.rules):
            found = cands.get(i)
            if found or searched[i]:
                masked: list[tuple[int, int]] = []
                limit = pos[i] = _scan(rule, buf, pos[i], limit, end, found, self.counters, masked)
                if masked:
                    plan.recheck(buf, masked, cands)
            else:
                # No match can start anywhere: the rule finishes all but its width.
                if not end:
                    limit = max(pos[i], limit - rule.width)
                pos[i] = limit
        ctx = self.ctx
        if limit <= ctx:
            return b""
        with memoryview(buf) as view:
            out = bytes(view[ctx:limit])
        drop = limit - 1  # keep the last sent byte as the next scan's context
        del buf[:drop]
        for i in range(len(pos)):
            pos[i] -= drop
        self.ctx = 1
        return out


def mask_text(plan: Plan, data: bytes, counters: Sequence[CounterLike] | None = None) -> bytes:
    """Every regex action of ``plan`` over a complete text (access-log values)."""
    if not plan.rules:
        return data
    return StreamMasker(plan, counters).feed(data, end=True)


def mask_whole(value: bytes, percent: float, table: bytes) -> bytes:
    """A KEYVALUE action's mask over a whole header value."""
    buf = bytearray(value)
    mask_span(buf, 0, len(buf), percent, table)
    return bytes(buf)


def predefined_action(
    action_type: str,
    index: int,
    *,
    shadow: bool = False,
    name: str | None = None,
) -> Action:
    """A predefined action (SSN, VISA, ..., ALL_CREDIT_CARDS_COMBINED), Gloo's defaults."""
    table = None if shadow else mask_table(DEFAULT_MASK_CHAR)
    if action_type == "ALL_CREDIT_CARDS_COMBINED":
        sources = patterns.ALL_CREDIT_CARDS
        one = patterns.combined(sources)
        prog = compile_regex(one)
        groups = tuple(range(1, prog.NumberOfCapturingGroups() + 1))
        rules: tuple[Rule, ...] = (_rule(one, prog, groups, DEFAULT_PERCENT, table, index),)
    else:
        rules = tuple(
            _rule(p, compile_regex(p), (1,), DEFAULT_PERCENT, table, index)
            for p in patterns.PREDEFINED[action_type]
        )
    return Action(name or action_type.lower(), rules)


def _rule(
    pattern: str,
    prog: Any,
    groups: tuple[int, ...],
    percent: float,
    table: bytes | None,
    index: int,
) -> Rule:
    # The width bound streaming relies on: unbounded regexes get UNBOUNDED_MATCH_WINDOW.
    w = patterns.max_width(pattern)
    bounded = w is not None and w <= UNBOUNDED_MATCH_WINDOW
    width = w if w is not None and bounded else UNBOUNDED_MATCH_WINDOW
    return Rule(pattern.encode(), prog, groups, width, percent, table, index, bounded)


def custom_rule(
    pattern: str, subgroup: int, index: int, percent: float, table: bytes | None
) -> Rule:
    """A CUSTOM action's regex; raises RegexError (bad regex or no such subgroup)."""
    prog = compile_regex(pattern)
    if subgroup > prog.NumberOfCapturingGroups():
        raise SubgroupError(
            f"subgroup {subgroup} does not exist: the regex has "
            f"{prog.NumberOfCapturingGroups()} capturing groups"
        )
    return _rule(pattern, prog, (subgroup,), percent, table, index)
