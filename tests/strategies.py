"""Hypothesis strategies derived from msgspec's own type information, so every struct gets
values that respect its constraints (lengths, bounds, patterns, literals, tags) without a
hand-written strategy per struct."""

from __future__ import annotations

from typing import Any

import msgspec
import msgspec.inspect as mi
from hypothesis import strategies as st

# Keep generated sizes small: the limits themselves are tested separately.
MAX_GENERATED = 30

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


def _text(info: mi.StrType) -> st.SearchStrategy[str]:
    if info.pattern:
        return st.from_regex(info.pattern, fullmatch=True)
    low = info.min_length or 0
    high = min(info.max_length if info.max_length is not None else MAX_GENERATED, MAX_GENERATED)
    return st.text(min_size=low, max_size=max(low, high))


def _int(info: mi.IntType) -> st.SearchStrategy[int]:
    low = info.ge if info.ge is not None else (info.gt + 1 if info.gt is not None else -(2**53))
    high = info.le if info.le is not None else (info.lt - 1 if info.lt is not None else 2**53)
    return st.integers(low, high)


def from_info(info: mi.Type) -> st.SearchStrategy[Any]:
    if isinstance(info, mi.StrType):
        return _text(info)
    if isinstance(info, mi.IntType):
        return _int(info)
    if isinstance(info, mi.FloatType):
        return st.floats(allow_nan=False, allow_infinity=False, width=64)
    if isinstance(info, mi.BoolType):
        return st.booleans()
    if isinstance(info, mi.NoneType):
        return st.none()
    if isinstance(info, mi.BytesType):
        return st.binary(max_size=min(info.max_length or MAX_GENERATED, MAX_GENERATED))
    if isinstance(info, mi.LiteralType):
        return st.sampled_from(info.values)
    if isinstance(info, mi.AnyType):
        return json_values
    if isinstance(info, mi.ListType):
        low = info.min_length or 0
        high = min(info.max_length if info.max_length is not None else 4, 4)
        return st.lists(from_info(info.item_type), min_size=low, max_size=max(low, high))
    if isinstance(info, mi.DictType):
        return st.dictionaries(from_info(info.key_type), from_info(info.value_type), max_size=4)
    if isinstance(info, mi.UnionType):
        return st.one_of(*(from_info(t) for t in info.types))
    if isinstance(info, mi.StructType):
        return _struct(info)
    raise TypeError(f"no strategy for {info!r}")


def _struct(info: mi.StructType) -> st.SearchStrategy[Any]:
    required = {f.name: from_info(f.type) for f in info.fields if f.required}
    optional = {f.name: from_info(f.type) for f in info.fields if not f.required}
    return st.fixed_dictionaries(required, optional=optional).map(lambda kw: info.cls(**kw))


def instances(type_: Any) -> st.SearchStrategy[Any]:
    """Valid instances of a struct (or a union of structs)."""
    return from_info(mi.type_info(type_))


def as_builtins(value: msgspec.Struct) -> Any:
    return msgspec.to_builtins(value)
