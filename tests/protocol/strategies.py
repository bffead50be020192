"""Hypothesis strategies read off the protocol's own types, so they follow every schema change.

`values_of(cls)` builds valid instances of any Struct in `protocol.messages` from what
`msgspec.inspect` says about it: lengths, bounds, patterns and literals come from the
fields' `Meta`, so every value drawn is one the daemon's decoder must accept.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any

import msgspec
import msgspec.inspect as mi
from hypothesis import strategies as st

from protocol import messages as m

# How much a generated list or dict may hold: enough to cover empty, one and many.
COLLECTION_SIZE = 3
# MessagePack ints are at most 64 bits wide, signed or unsigned.
MSGPACK_INT_MIN, MSGPACK_INT_MAX = -(2**63), 2**64 - 1


def protocol_structs() -> list[type[msgspec.Struct]]:
    """Every Struct class the `protocol.messages` package defines (in any of its feature
    modules) and re-exports."""
    return [
        obj
        for _, obj in inspect.getmembers(m, inspect.isclass)
        if issubclass(obj, msgspec.Struct) and obj.__module__.startswith(m.__name__ + ".")
    ]


@cache
def values_of(cls: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
    """Valid instances of `cls`, optional fields sometimes left to their default."""
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return _struct(info)


def for_type(t: mi.Type) -> st.SearchStrategy[Any]:
    """Valid Python values for one `msgspec.inspect` type."""
    match t:
        case mi.Metadata():
            return for_type(t.type)
        case mi.NoneType():
            return st.none()
        case mi.BoolType():
            return st.booleans()
        case mi.IntType():
            return _ints(t)
        case mi.FloatType():
            return _floats(t)
        case mi.StrType():
            return _strs(t)
        case mi.BytesType():
            return st.binary(min_size=t.min_length or 0, max_size=t.max_length)
        case mi.LiteralType():
            return st.sampled_from(t.values)
        case mi.UnionType():
            return st.one_of([for_type(member) for member in t.types])
        case mi.ListType():
            low, high = _sizes(t)
            return st.lists(for_type(t.item_type), min_size=low, max_size=high)
        case mi.DictType():
            low, high = _sizes(t)
            keys, values = for_type(t.key_type), for_type(t.value_type)
            return st.dictionaries(keys, values, min_size=low, max_size=high)
        case mi.StructType():
            return values_of(t.cls)
        case mi.AnyType():
            return any_msgpack()
    raise NotImplementedError(f"no strategy for {t!r}: teach tests/protocol/strategies.py")


def _struct(info: mi.StructType) -> st.SearchStrategy[Any]:
    required = {f.name: for_type(f.type) for f in info.fields if f.required}
    optional = {f.name: for_type(f.type) for f in info.fields if not f.required}
    return st.fixed_dictionaries(required, optional=optional).map(lambda kw: info.cls(**kw))


def _ints(t: mi.IntType) -> st.SearchStrategy[int]:
    low = MSGPACK_INT_MIN if t.ge is None else t.ge
    high = MSGPACK_INT_MAX if t.le is None else t.le
    if t.gt is not None:
        low = max(low, t.gt + 1)
    if t.lt is not None:
        high = min(high, t.lt - 1)
    assert t.multiple_of is None, "teach _ints about multiple_of"
    return st.integers(low, high)


def _floats(t: mi.FloatType) -> st.SearchStrategy[float]:
    # NaN never equals itself, so a round trip could not be checked with ==
    return st.floats(
        min_value=t.gt if t.ge is None else t.ge,
        max_value=t.lt if t.le is None else t.le,
        exclude_min=t.gt is not None,
        exclude_max=t.lt is not None,
        allow_nan=False,
    )


def _strs(t: mi.StrType) -> st.SearchStrategy[str]:
    if t.pattern is not None:
        pattern = st.from_regex(t.pattern)
        return pattern.filter(lambda s: _fits(len(s), t.min_length, t.max_length))
    return st.text(min_size=t.min_length or 0, max_size=t.max_length)


def _fits(n: int, low: int | None, high: int | None) -> bool:
    return (low is None or n >= low) and (high is None or n <= high)


def _sizes(t: mi.ListType | mi.DictType) -> tuple[int, int]:
    low = t.min_length or 0
    high = COLLECTION_SIZE if t.max_length is None else min(t.max_length, COLLECTION_SIZE)
    return low, max(low, high)


def any_msgpack() -> st.SearchStrategy[Any]:
    """Arbitrary MessagePack-encodable data: scalars, and lists and maps of them."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(MSGPACK_INT_MIN, MSGPACK_INT_MAX),
        st.floats(allow_nan=False),
        st.text(max_size=40),
        st.binary(max_size=40),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(
                st.one_of(st.text(max_size=12), st.integers(-(2**63), 2**63 - 1)), inner, max_size=4
            ),
        ),
        max_leaves=12,
    )
