"""The base of every config schema model: strict, camelCase aliases, frozen; durations.

Shared by ``gloo_schema`` and the per-policy schemas (``dfproxy/config/schema/``), so a policy
module can define its Gloo shapes without importing the whole Gateway schema.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict
from pydantic.alias_generators import to_camel

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """A protobuf Duration as Gloo YAML writes it (``86400s``, ``0.5s``; ``ms``/``m``/``h``
    accepted too) or a number of seconds. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '5s'")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"expected a duration such as '5s' or '250ms', got {value!r}")


class Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True
    )


# Seconds, written in YAML as a protobuf Duration ("5s").
Duration = Annotated[float, BeforeValidator(parse_duration)]
