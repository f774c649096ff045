"""Gloo's DLP options (``dlp.options.gloo.solo.io``, reference §8.10), as strict models.

Listener ``httpGateway.options.dlp`` is a ``FilterConfig`` (rules, each a matcher with
actions; the first matching rule applies); virtual host and route ``options.dlp`` is a
``Config`` (actions), which replaces the listener's entirely. Checks that need the whole
action (KEYVALUE needs access-log masking, regexes compile) are made when the policy
compiles, with the full field path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator

from dfproxy.config.schema_base import Model

if TYPE_CHECKING:
    from dfproxy.config.gloo_schema import Matcher

ActionType = Literal[
    "CUSTOM",
    "SSN",
    "MASTERCARD",
    "VISA",
    "AMEX",
    "DISCOVER",
    "JCB",
    "DINERS_CLUB",
    "CREDIT_CARD_TRACKERS",
    "ALL_CREDIT_CARDS",
    "KEYVALUE",
    "ALL_CREDIT_CARDS_COMBINED",
]
EnableFor = Literal["RESPONSE_BODY", "ACCESS_LOGS", "ALL"]


class Percent(Model):
    """solo.io.envoy.type.Percent: ``{value: 60}``."""

    value: float = Field(ge=0.0, le=100.0)


def _percent(value: Any) -> Any:
    # dfproxy also takes a bare number (``percent: 60``) for the message.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"value": value}
    return value


PercentField = Annotated[Percent | None, BeforeValidator(_percent)]


def _one_byte(value: str) -> str:
    if len(value.encode("utf-8")) > 1:
        raise ValueError(f"maskChar is one byte (Gloo: max_bytes 1), got {value!r}")
    return value


class RegexAction(Model):
    regex: str = Field(min_length=1)
    subgroup: int = Field(default=0, ge=0)  # 0: the whole match


class CustomAction(Model):
    name: str = ""
    regex: list[str] = Field(default_factory=list)  # deprecated: whole-match regexes
    mask_char: str = ""
    percent: PercentField = None
    regex_actions: list[RegexAction] = Field(default_factory=list)

    _mask = field_validator("mask_char")(_one_byte)

    @field_validator("regex")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if any(not r for r in value):
            raise ValueError("a regex is never empty")
        return value


class KeyValueAction(Model):
    name: str = ""
    mask_char: str = ""
    percent: PercentField = None
    key_to_mask: str = ""

    _mask = field_validator("mask_char")(_one_byte)


class Action(Model):
    action_type: ActionType = "CUSTOM"
    custom_action: CustomAction | None = None
    key_value_action: KeyValueAction | None = None
    shadow: bool = False


class DlpRule(Model):
    matcher: Matcher | None = None  # None: prefix "/"
    actions: list[Action] = Field(default_factory=list)


class FilterConfig(Model):
    """Listener level (``httpGateway.options.dlp``)."""

    dlp_rules: list[DlpRule] = Field(default_factory=list)
    enabled_for: EnableFor = "RESPONSE_BODY"


class Config(Model):
    """Virtual host or route level (``options.dlp``)."""

    actions: list[Action] = Field(default_factory=list)
    enabled_for: EnableFor = "RESPONSE_BODY"


def resolve(matcher: type[Any]) -> None:
    """Bind the Gloo ``Matcher`` model (gloo_schema defines it and imports this module)."""
    DlpRule.model_rebuild(_types_namespace={"Matcher": matcher})
    FilterConfig.model_rebuild()
