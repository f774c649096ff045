"""The predefined DLP actions: Gloo's regexes, and how far a regex's matches can reach.

The regexes are those of Gloo's ``dlp.proto`` (``Action`` comment; reference §8.10), RE2
syntax. Each masks its subgroup 1; the ``(?:^|\\D)`` / ``(?:\\D|$)`` boundaries keep a 16-digit
card number inside a longer digit run from matching.
"""

from __future__ import annotations

import re
from typing import Final

SSN: Final = (
    r"(?:^|\D)([0-9]{9})(?:\D|$)",
    r"(?:^|\D)([0-9]{3}\-[0-9]{2}\-[0-9]{4})(?:\D|$)",
    r"(?:^|\D)([0-9]{3}\ [0-9]{2}\ [0-9]{4})(?:\D|$)",
)
# (?:\ |\-|) is the optional space or dash between card digit groups.
MASTERCARD: Final = (
    r"(?:^|\D)(5[1-5][0-9]{2}(?:\ |\-|)[0-9]{4}(?:\ |\-|)[0-9]{4}(?:\ |\-|)[0-9]{4})(?:\D|$)",
)
VISA: Final = (
    r"(?:^|\D)(4[0-9]{3}(?:\ |\-|)[0-9]{4}(?:\ |\-|)[0-9]{4}(?:\ |\-|)[0-9]{4})(?:\D|$)",
)
AMEX: Final = (r"(?:^|\D)((?:34|37)[0-9]{2}(?:\ |\-|)[0-9]{6}(?:\ |\-|)[0-9]{5})(?:\D|$)",)
DISCOVER: Final = (r"(?:^|\D)(6011(?:\ |\-|)[0-9]{4}(?:\ |\-|)[0-9]{4}(?:\ |\-|)[0-9]{4})(?:\D|$)",)
JCB: Final = (
    r"(?:^|\D)(3[0-9]{3}(?:\ |\-|)[0-9]{4}(?:\ |\-|)[0-9]{4}(?:\ |\-|)[0-9]{4})(?:\D|$)",
    r"(?:^|\D)((?:2131|1800)[0-9]{11})(?:\D|$)",
)
DINERS_CLUB: Final = (
    r"(?:^|\D)(30[0-5][0-9](?:\ |\-|)[0-9]{6}(?:\ |\-|)[0-9]{4})(?:\D|$)",
    r"(?:^|\D)((?:36|38)[0-9]{2}(?:\ |\-|)[0-9]{6}(?:\ |\-|)[0-9]{4})(?:\D|$)",
)
# Magnetic-stripe track data (track 1 ``%B...^NAME^YYMM...``, track 2 ``;PAN=...``).
CREDIT_CARD_TRACKERS: Final = (
    r"([1-9][0-9]{2}\-[0-9]{2}\-[0-9]{4}\^\d)",
    r"(?:^|\D)(\%?[Bb]\d{13,19}\^[\-\/\.\w\s]{2,26}\^[0-9][0-9][01][0-9][0-9]{3})",
    r"(?:^|\D)(\;\d{13,19}\=(?:\d{3}|)(?:\d{4}|\=))",
)
# "All credit card related regexes from above", in the proto's order.
ALL_CREDIT_CARDS: Final = (
    MASTERCARD + VISA + AMEX + DISCOVER + JCB + DINERS_CLUB + CREDIT_CARD_TRACKERS
)

# actionType -> its regexes (each masking subgroup 1). ALL_CREDIT_CARDS_COMBINED is
# ALL_CREDIT_CARDS as one alternation (built by the masker); CUSTOM and KEYVALUE bring their
# own settings.
PREDEFINED: Final[dict[str, tuple[str, ...]]] = {
    "SSN": SSN,
    "MASTERCARD": MASTERCARD,
    "VISA": VISA,
    "AMEX": AMEX,
    "DISCOVER": DISCOVER,
    "JCB": JCB,
    "DINERS_CLUB": DINERS_CLUB,
    "CREDIT_CARD_TRACKERS": CREDIT_CARD_TRACKERS,
    "ALL_CREDIT_CARDS": ALL_CREDIT_CARDS,
}


def combined(patterns: tuple[str, ...]) -> str:
    """One alternation of ``patterns`` (ALL_CREDIT_CARDS_COMBINED): its groups are the
    patterns' groups in order, and the one that took part is masked."""
    return "|".join(f"(?:{p})" for p in patterns)


def max_width(pattern: str) -> int | None:
    """The longest match ``pattern`` can have, in bytes (RE2 in Latin-1 mode over the UTF-8
    pattern, so a byte is a character), or None when unbounded or not computable.

    Python's regex parser reads RE2 syntax closely enough for a width bound; syntax it does
    not know (``\\pN``, ``\\Q..\\E``, ``\\z``, ``(?U)``) gives None, which callers treat as
    unbounded. Where the two differ (``[[:alpha:]]`` parses as two characters) Python's
    width is larger, never smaller, so the bound stays safe.
    """
    from re import _parser  # type: ignore[attr-defined]  # the stdlib parser (3.11+)

    text = pattern.encode("utf-8").decode("latin-1")
    try:
        _, hi = _parser.parse(text).getwidth()
    except (re.error, OverflowError, RecursionError, ValueError):
        return None
    if hi >= _parser.MAXREPEAT or hi >= 1 << 30:
        return None
    return int(hi)
