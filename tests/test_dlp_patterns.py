"""dfproxy.dlp.patterns: Gloo's predefined regexes, positive and negative samples for every
type, the digit-run boundaries, and the match-width bound used for streaming."""

from __future__ import annotations

import pytest

from dfproxy.dlp import masker, patterns


def mask(action_type: str, text: str) -> str:
    plan = masker.Plan((masker.predefined_action(action_type, 0),))
    return masker.mask_text(plan, text.encode()).decode()


# (type, sample that matches -> masked, sample that must not match)
SAMPLES = [
    ("SSN", "123456789", "XXXXXXX89", "1234567890"),
    ("SSN", "123-45-6789", "XXX-XX-X789", "123-456-789"),
    ("SSN", "123 45 6789", "XXX XX X789", "123 45 67890"),
    ("VISA", "4397945340344828", "XXXXXXXXXXXX4828", "43979453403448281"),
    ("VISA", "4397 9453 4034 4828", "XXXX XXXX XXXX 4828", "5397 9453 4034 4828"),
    ("VISA", "4397-9453-4034-4828", "XXXX-XXXX-XXXX-4828", "4397-9453-4034-482"),
    ("MASTERCARD", "5500000000000004", "XXXXXXXXXXXX0004", "5600000000000004"),
    ("MASTERCARD", "5105 1051 0510 5100", "XXXX XXXX XXXX 5100", "15105105105105100"),
    ("AMEX", "378282246310005", "XXXXXXXXXXX0005", "358282246310005"),
    ("AMEX", "3714-496353-98431", "XXXX-XXXXXX-X8431", "3714-496353-984311"),
    ("DISCOVER", "6011111111111117", "XXXXXXXXXXXX1117", "6012111111111117"),
    ("JCB", "3530111333300000", "XXXXXXXXXXXX0000", "353011133330000"),
    ("JCB", "213112345678901", "XXXXXXXXXXX8901", "213212345678901"),
    ("DINERS_CLUB", "30569309025904", "XXXXXXXXXXX904", "30669309025904"),
    ("DINERS_CLUB", "3852 000002 3237", "XXXX XXXXXX 3237", "3952 000002 3237"),
    ("CREDIT_CARD_TRACKERS", "123-45-6789^1", "XXX-XX-XXX9^1", "023-45-6789^1"),
    ("CREDIT_CARD_TRACKERS", ";4111111111111111=2512", "XXXXXXXXXXXXXXXXX=2512", ";41111=2512"),
    (
        "CREDIT_CARD_TRACKERS",
        "%B4111111111111111^DOE/JOHN^2512101",
        "X" * 26 + "N^2512101",  # 35 bytes, 26 masked
        "%B41111^DOE/JOHN^2512101",
    ),
]


@pytest.mark.parametrize(("action_type", "text", "masked", "negative"), SAMPLES)
def test_predefined_type_masks_its_sample_and_not_the_negative(
    action_type: str, text: str, masked: str, negative: str
) -> None:
    assert mask(action_type, text) == masked
    assert mask(action_type, f'{{"v": "{text}"}}') == f'{{"v": "{masked}"}}'
    assert mask(action_type, negative) == negative


@pytest.mark.parametrize("action_type", ["ALL_CREDIT_CARDS", "ALL_CREDIT_CARDS_COMBINED"])
def test_all_credit_cards_covers_every_card_type(action_type: str) -> None:
    for t, text, masked, _ in SAMPLES:
        if t not in ("SSN", "CREDIT_CARD_TRACKERS"):
            assert mask(action_type, f"card {text}.") == f"card {masked}.", (t, text)


def test_a_card_inside_a_longer_digit_run_does_not_match() -> None:
    # The (?:^|\D) / (?:\D|$) boundaries: 16 digits inside 18 are not a card number.
    for text in ("143979453403448281", "04397945340344828", "43979453403448280"):
        assert mask("ALL_CREDIT_CARDS", text) == text
        assert mask("VISA", f"id={text};") == f"id={text};"


def test_boundaries_at_start_and_end_of_text_match() -> None:
    assert mask("VISA", "4397945340344828") == "XXXXXXXXXXXX4828"
    assert mask("VISA", "a4397945340344828") == "aXXXXXXXXXXXX4828"
    assert mask("VISA", "4397945340344828b") == "XXXXXXXXXXXX4828b"


def test_every_predefined_regex_compiles_in_re2_and_has_a_bounded_width() -> None:
    for action_type, regexes in patterns.PREDEFINED.items():
        for r in regexes:
            masker.compile_regex(r)
            width = patterns.max_width(r)
            assert width is not None and width < 64, (action_type, r)
    combined = patterns.combined(patterns.ALL_CREDIT_CARDS)
    assert patterns.max_width(combined) == max(
        patterns.max_width(r) or 0 for r in patterns.ALL_CREDIT_CARDS
    )


def test_max_width_of_bounded_unbounded_and_foreign_syntax() -> None:
    assert patterns.max_width("hello") == 5
    assert patterns.max_width(r"(?:^|\D)([0-9]{9})(?:\D|$)") == 11
    assert patterns.max_width("é") == 2  # bytes of UTF-8
    assert patterns.max_width(r'"name":[^"]*"([^"]*)"') is None
    assert patterns.max_width(r"\pN+") is None  # RE2-only syntax: unknown, so unbounded
