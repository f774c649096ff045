"""dfproxy.dlp.masker: Gloo's documented examples, rounding, order of actions, streaming
(a match split at every chunk boundary), the bounded carry-over and shadow mode."""

from __future__ import annotations

import pytest

from dfproxy.dlp import masker


class Counter:
    def __init__(self) -> None:
        self.value = 0


def custom(
    *regexes: str,
    char: bytes = b"X",
    percent: float = 75.0,
    subgroup: int = 0,
    shadow: bool = False,
    index: int = 0,
    name: str = "custom",
) -> masker.Action:
    table = None if shadow else masker.mask_table(char)
    rules = tuple(masker.custom_rule(r, subgroup, index, percent, table) for r in regexes)
    return masker.Action(name, rules)


def plan(*actions: masker.Action | str) -> masker.Plan:
    return masker.Plan(
        tuple(
            masker.predefined_action(a, i) if isinstance(a, str) else a
            for i, a in enumerate(actions)
        )
    )


def run(p: masker.Plan, text: bytes) -> bytes:
    return masker.mask_text(p, text)


# -- the documented examples (reference §8.10) -----------------------------------------------
def test_doc_hello_world_mask_char_y_60_percent() -> None:
    assert run(plan(custom("hello", "world", char=b"Y", percent=60)), b"hello world") == (
        b"YYYlo YYYld"
    )


def test_doc_hello_world_defaults() -> None:
    assert run(plan(custom("hello", "world")), b"hello world") == b"XXXXo XXXXd"


def test_doc_all_credit_cards_visa() -> None:
    assert run(plan("ALL_CREDIT_CARDS"), b"4397945340344828") == b"XXXXXXXXXXXX4828"


def test_doc_ssn() -> None:
    assert run(plan("SSN"), b"123-45-6789") == b"XXX-XX-X789"


def test_doc_petstore_subgroup_60_percent() -> None:
    p = plan(custom(r'"name":[^"]*"([^"]*)"', subgroup=1, percent=60))
    body = b'[{"id":1,"name":"Dog","status":"available"},{"id":2,"name":"Cat","status":"pending"}]'
    assert run(p, body) == (
        b'[{"id":1,"name":"XXg","status":"available"},{"id":2,"name":"XXt","status":"pending"}]'
    )


def test_doc_key_value_header_100_percent() -> None:
    assert masker.mask_whole(b"test-value", 100, masker.mask_table(b"*")) == b"****-*****"


def test_doc_json_response_of_the_guide() -> None:
    body = b'{\n   "fakevisa": "4397945340344828",\n   "ssn": "123-45-6789"\n}'
    assert run(plan("SSN", "ALL_CREDIT_CARDS"), body) == (
        b'{\n   "fakevisa": "XXXXXXXXXXXX4828",\n   "ssn": "XXX-XX-X789"\n}'
    )


# -- rounding and mask characters ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("length", "percent", "masked"),
    [
        (11, 75, 8),
        (10, 75, 8),
        (5, 60, 3),
        (3, 60, 2),
        (3, 50, 2),
        (1, 50, 1),
        (4, 0, 0),
        (4, 100, 4),
        (7, 10, 1),
        (5, 10, 1),
        (4, 10, 0),
        (16, 75, 12),
    ],
)
def test_masked_length_is_std_round(length: int, percent: float, masked: int) -> None:
    assert masker.masked_length(length, percent) == masked


def test_percent_zero_masks_nothing_but_still_counts() -> None:
    c = Counter()
    p = plan(custom("secret", percent=0))
    assert masker.mask_text(p, b"a secret b", [c]) == b"a secret b"
    assert c.value == 1


def test_mask_char_and_kept_separators() -> None:
    p = plan(custom("[a-z]+ [a-z]+-[a-z]+", char=b"#", percent=100))
    assert run(p, b"ab cd-ef!") == b"## ##-##!"


# -- order of actions -------------------------------------------------------------------------
def test_actions_apply_in_order_each_on_the_previous_output() -> None:
    first = custom("abc", percent=100, index=0)
    second = custom("XXX", char=b"Z", percent=100, index=1)
    assert run(plan(first, second), b"-abc-") == b"-ZZZ-"
    # The other way round the second regex never sees "XXX".
    a = custom("XXX", char=b"Z", percent=100, index=0)
    b = custom("abc", percent=100, index=1)
    assert run(plan(a, b), b"-abc-") == b"-XXX-"


def test_regexes_of_one_action_apply_in_order() -> None:
    assert run(plan(custom("ab", "XXc", percent=100)), b"abc") == b"XXX"


# -- streaming ---------------------------------------------------------------------------------
BODY = (
    b'{"items": [{"card": "4397945340344828", "ssn": "123-45-6789"}, '
    b'{"mc": "5500 0000 0000 0004", "n": 14397945340344828, "amex": "378282246310005"}]}'
)


def stream(p: masker.Plan, pieces: list[bytes]) -> bytes:
    m = masker.StreamMasker(p)
    out = b"".join(m.feed(piece) for piece in pieces)
    return out + m.feed(b"", end=True)


@pytest.mark.parametrize("split", range(len(BODY) + 1))
def test_a_match_split_at_any_chunk_boundary_is_masked(split: int) -> None:
    p = plan("SSN", "ALL_CREDIT_CARDS")
    whole = run(p, BODY)
    assert b'"XXXXXXXXXXXX4828"' in whole and b"14397945340344828" in whole
    assert stream(p, [BODY[:split], BODY[split:]]) == whole


def test_every_pair_of_split_points_and_byte_by_byte() -> None:
    p = plan("SSN", "ALL_CREDIT_CARDS")
    body = BODY[:90]
    whole = run(p, body)
    for i in range(len(body) + 1):
        for j in range(i, len(body) + 1):
            assert stream(p, [body[:i], body[i:j], body[j:]]) == whole, (i, j)
    assert stream(p, [bytes([b]) for b in BODY]) == run(p, BODY)


def test_custom_unbounded_regex_split_across_chunks() -> None:
    p = plan(custom(r'"name":[^"]*"([^"]*)"', subgroup=1, percent=60))
    body = b'[{"id":1,"name":"Dog"},{"id":2,"name":"Caterpillar"}]' * 3
    whole = run(p, body)
    for split in range(len(body) + 1):
        assert stream(p, [body[:split], body[split:]]) == whole


def test_carry_over_is_bounded_by_the_widths_of_the_rules() -> None:
    p = plan("SSN", "ALL_CREDIT_CARDS")
    assert p.carry < 300  # 14 regexes of at most 57 bytes each, plus one context byte
    m = masker.StreamMasker(p)
    sent = 0
    for _ in range(2000):
        sent += len(m.feed(b"0123456789 abc-def 4397945340344828 "))
        assert m.held <= p.carry
    assert sent > 60000


def test_carry_over_of_an_unbounded_regex_is_capped() -> None:
    p = plan(custom("a[^z]*z"))
    m = masker.StreamMasker(p)
    for _ in range(100):
        m.feed(b"a" + b"b" * 999)
        assert m.held <= masker.UNBOUNDED_MATCH_WINDOW + 1
    assert p.carry == masker.UNBOUNDED_MATCH_WINDOW + 1


def test_no_match_sends_everything_but_the_carry() -> None:
    p = plan("VISA")
    m = masker.StreamMasker(p)
    out = m.feed(b"x" * 1000)
    assert len(out) == 1000 - 21 and m.held == 21
    assert m.feed(b"", end=True) == b"x" * 21


def test_empty_body() -> None:
    assert stream(plan("SSN"), []) == b""
    assert stream(plan("SSN"), [b"", b""]) == b""


# -- shadow mode ---------------------------------------------------------------------------
def test_shadow_counts_without_modifying() -> None:
    shadow = masker.predefined_action("SSN", 0, shadow=True)
    c = Counter()
    body = b"a 123-45-6789 b 987-65-4321 c"
    m = masker.StreamMasker(masker.Plan((shadow,)), [c])
    out = m.feed(body[:8]) + m.feed(body[8:]) + m.feed(b"", end=True)
    assert out == body
    assert c.value == 2


def test_counts_per_action_split_across_chunks_count_once() -> None:
    ssn, cards = Counter(), Counter()
    p = plan("SSN", "ALL_CREDIT_CARDS")
    m = masker.StreamMasker(p, [ssn, cards])
    for split in (10, 30, 50):
        m.feed(BODY[:split])
        m.feed(BODY[split:])
        m.feed(b"", end=True)
        m = masker.StreamMasker(p, [ssn, cards])
    assert (ssn.value, cards.value) == (3, 9)


# -- errors --------------------------------------------------------------------------------
def test_bad_regex_and_missing_subgroup_raise() -> None:
    with pytest.raises(masker.RegexError, match="missing"):
        masker.compile_regex("(abc")
    with pytest.raises(masker.RegexError):
        masker.compile_regex("(?=lookahead)")  # RE2 has no lookaround
    with pytest.raises(masker.SubgroupError, match="subgroup 2"):
        masker.custom_rule("(a)b", 2, 0, 75, None)


# -- against a plain reference ----------------------------------------------------------------
def reference(p: masker.Plan, text: bytes) -> bytes:
    """Each rule over the whole text, one after another, no prefilter, no streaming."""
    buf = bytearray(text)
    for rule in p.rules:
        pos = 0
        while pos <= len(buf):
            spans = rule.prog.Match(masker._UNANCHORED, buf, pos, len(buf))
            s, e = spans[0]
            if s < 0:
                break
            if e > s and rule.table is not None:
                for g in rule.groups:
                    if spans[g][0] >= 0:
                        masker.mask_span(buf, *spans[g], rule.percent, rule.table)
                        break
            pos = e if e > s else e + 1
    return bytes(buf)


TOKENS = [
    b"4397945340344828",
    b"5500 0000 0000 0004",
    b"3714-496353-98431",
    b"123-45-6789",
    b"123456789",
    b"987 65 4321",
    b"14397945340344828",
    b"6011111111111117",
    b"X-XX",
    b'"name":"Dog"',
    b";4111111111111111=2512",
    b"%B4111111111111111^DOE/JOHN^2512101",
    b" ",
    b"-",
    b", ",
    b"abc",
    b"\n",
    b"0",
    b"42",
    b'{"a": ',
    b"}",
]


@pytest.mark.parametrize("seed", range(12))
def test_random_bodies_match_the_reference_whole_and_streamed(seed: int) -> None:
    import random

    rnd = random.Random(seed)
    body = b"".join(rnd.choice(TOKENS) for _ in range(rnd.randint(50, 1500)))
    plans = [
        plan("SSN", "ALL_CREDIT_CARDS"),
        plan("ALL_CREDIT_CARDS_COMBINED", "CREDIT_CARD_TRACKERS"),
        # The second action matches only what the first one masked ("XXX-XX-X789").
        plan("SSN", custom("X-XX", char=b"Z", percent=100, index=1)),
        plan(custom(r'"name":[^"]*"([^"]*)"', subgroup=1, percent=60), "VISA"),
    ]
    for p in plans:
        want = reference(p, body)
        assert masker.mask_text(p, body) == want
        m = masker.StreamMasker(p)
        out, i = [], 0
        while i < len(body):
            n = rnd.choice((1, 2, 7, 50, 300, 2000))
            out.append(m.feed(body[i : i + n]))
            i += n
        out.append(m.feed(b"", end=True))
        assert b"".join(out) == want


def test_a_long_custom_regex_searches_on_its_own_and_still_matches_the_reference() -> None:
    p = plan(custom("a{1,200}b", percent=100), "SSN")
    assert p.searched == (True, False, False, False)
    body = (b"a" * 150 + b"b 123-45-6789 ") * 20
    assert masker.mask_text(p, body) == reference(p, body)
    m = masker.StreamMasker(p)
    out = b"".join(m.feed(body[i : i + 97]) for i in range(0, len(body), 97))
    assert out + m.feed(b"", end=True) == reference(p, body)
