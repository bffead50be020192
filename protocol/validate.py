"""Turning what a person or a model typed into a request: the verb's Struct is the only rule.

The MCP server (tool arguments), `hive ctl` (command-line options) and the dashboard (form
fields and path parts) each build requests from loose input. They all call `build`, so a
field's constraints — its type, `Meta(max_length=…)`, its pattern, its literal values — are
written once, on the Struct, and refused the same way everywhere. The daemon decodes the
frame with the same Struct again; this only lets a surface say what is wrong before it
connects, in its own words.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")
_AT_PATH = re.compile(r"^(?P<what>.*?) - at `\$\.?(?P<path>[^`]*)`$", re.S)


class InvalidRequest(ValueError):
    """Input the verb's Struct refuses. `str()` is msgspec's own sentence; `summary` says it
    as `invalid: <field>: <what is wrong>`."""

    def __init__(self, verb: type[Any], error: msgspec.ValidationError) -> None:
        super().__init__(str(error))
        self.verb = verb

    @property
    def summary(self) -> str:
        """`Expected `int`, got `str` - at `$.max`` → `invalid: max: expected `int`, got `str``."""
        text = str(self)
        found = _AT_PATH.match(text)
        if found is None:
            return f"invalid: {text}"
        what = found["what"]
        return f"invalid: {found['path'] or 'arguments'}: {what[:1].lower()}{what[1:]}"


def build(verb: type[T], fields: Mapping[str, Any], *, from_text: bool = False) -> T:
    """The request `verb` made of `fields`, or `InvalidRequest`. `from_text` accepts numbers
    and booleans written as strings (form fields, query strings)."""
    try:
        return msgspec.convert(dict(fields), verb, strict=not from_text)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(verb, exc) from None
