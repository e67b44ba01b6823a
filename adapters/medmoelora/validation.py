"""Typed config fields: every value of a config dataclass coerced to its type hint and checked on creation.

Values reach a config from YAML files, ``--set key=value`` (parsed as YAML), JSON and Python, in many
spellings. PyYAML follows YAML 1.1, which reads ``2e-4`` and ``1e6`` as *strings* (a float needs a dot:
``2.0e-4``); ``--set ranks=8`` gives a scalar where a list is meant; a JSON round trip turns tuples into
lists. `coerce_fields` turns each field's value into the type its hint names and checks the constraints
that the hint carries as `typing.Annotated` metadata:

==================================  ====================================================================
hint                                accepted
==================================  ====================================================================
``int``                             ints; integral floats (``1e6``, ``8.0``); numeric strings (``"8"``,
                                    ``"1_000"``, ``"1e6"``). Never a bool.
``float``                           ints, floats and numeric strings (``"2e-4"``, ``".5"``, ``"1_000"``),
                                    finite only.
``bool``                            true/false, yes/no, on/off (any case), 1/0.
``str``                             strings only.
``Literal[...]``                    one of the listed strings (an unknown one gets "did you mean").
``tuple[X, ...]``                   a list or tuple of X; a single X means a one-entry list (``ranks=8``
                                    is ``ranks=[8]``).
``X | None``                        None (YAML ``null``/``~``, or the string ``none``/``null`` when X is
                                    not a string), else X.
``Mapping[K, V]``                   a mapping, keys as K, values as V.
a config dataclass                  an instance, or a mapping of its fields (built with `build`).
``Annotated[X, Range(...)]``        X within the bounds; ``OneOf(...)``: X among the choices.
==================================  ====================================================================

An error is one `ConfigError` line naming the field, the value received and what is allowed. Rules
that relate several fields stay in each dataclass's ``__post_init__``, after the coercion.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal, Union

from medmoelora.errors import ConfigError, unknown_name

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_NULL = ("none", "null", "~")


class _Invalid(Exception):
    """A value that does not fit a hint; ``allowed`` says what would."""

    def __init__(self, allowed: str) -> None:
        super().__init__(allowed)
        self.allowed = allowed


@dataclass(frozen=True)
class Range:
    """Bounds of a number field, e.g. ``Annotated[float, Range(ge=0, lt=1)]``; ``why`` explains a bound."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    why: str = ""

    def holds(self, value: float) -> bool:
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    def describe(self) -> str:
        """`in [0, 1)`, `>= 1`, `> 0`."""
        lower = f"[{_number(self.ge)}" if self.ge is not None else f"({_number(self.gt)}" if self.gt is not None else ""
        upper = f"{_number(self.le)}]" if self.le is not None else f"{_number(self.lt)})" if self.lt is not None else ""
        if lower and upper:
            return f"in {lower}, {upper}"
        for symbol, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt)):
            if bound is not None:
                return f"{symbol} {_number(bound)}"
        return ""


@dataclass(frozen=True)
class OneOf:
    """A string field whose valid values are looked up when checked (e.g. the tasks that have a prompt)."""

    choices: Callable[[], Iterable[str]]

    def names(self) -> list[str]:
        return sorted(self.choices())


# Shorthands for the common number fields.
PositiveInt = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, Range(ge=0)]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]


def _number(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# ---- the dataclass side ---------------------------------------------------------------------------------
@cache
def field_hints(cls: type) -> dict[str, Any]:
    """The resolved type hints (with their Annotated metadata) of a dataclass's fields."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def coerce_fields(instance: Any, prefix: str = "") -> None:
    """Replace every field of a (frozen) dataclass instance by its coerced value; the first misfit raises.

    ``prefix`` names the section in errors (``training.`` -> ``training.max_steps``).
    """
    for name, hint in field_hints(type(instance)).items():
        value = getattr(instance, name)
        object.__setattr__(instance, name, coerce(f"{prefix}{name}", value, hint))


def coerce(field: str, value: Any, hint: Any) -> Any:
    """``value`` as ``hint`` names it, or a `ConfigError` naming ``field``, ``value`` and what is allowed."""
    try:
        return _coerce(value, hint)
    except _Invalid as error:
        raise ConfigError(field, value, error.allowed) from None


def build(cls: type, data: Any, section: str | None = None) -> Any:
    """A config dataclass from a mapping of its fields; an unknown key gets "did you mean"."""
    section = section or cls.__name__
    if not isinstance(data, Mapping):
        raise ConfigError(section, data, f"must be a mapping of {cls.__name__} fields ({', '.join(field_hints(cls))})")
    known = field_hints(cls)
    for key in data:
        if not isinstance(key, str) or key not in known:
            raise unknown_name(f"{cls.__name__} field", str(key), known)
    return cls(**data)


# ---- one value against one hint -----------------------------------------------------------------------------
def _coerce(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return _coerce_annotated(value, hint)
    if origin in (Union, types.UnionType):
        return _coerce_optional(value, args)
    if origin is Literal:
        return _choose(value, [str(arg) for arg in args])
    if origin is tuple:
        return _coerce_tuple(value, args)
    if origin in (Mapping, dict):
        return _coerce_mapping(value, args)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise _Invalid(describe(hint))
        return build(hint, value)
    if hint is Any:
        return value
    if hint is bool:
        return _to_bool(value)
    if hint is int:
        return _to_int(value)
    if hint is float:
        return _to_float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _Invalid("must be a string")
        return value
    raise TypeError(f"config fields of type {hint!r} are not supported")  # a bug in a config class


def _coerce_annotated(value: Any, hint: Any) -> Any:
    try:
        coerced = _coerce(value, typing.get_args(hint)[0])
    except _Invalid:
        raise _Invalid(describe(hint)) from None  # the whole rule: "must be an integer >= 1", not "an integer"
    for item in hint.__metadata__:
        if isinstance(item, Range) and not item.holds(coerced):
            raise _Invalid(describe(hint))
        if isinstance(item, OneOf):
            _choose(coerced, item.names())
    return coerced


def _coerce_optional(value: Any, args: tuple[Any, ...]) -> Any:
    arms = [arg for arg in args if arg is not type(None)]
    if len(arms) != 1:
        raise TypeError(f"only `X | None` unions are supported, not {args!r}")
    if value is None:
        return None
    arm = arms[0]
    if isinstance(value, str) and value.strip().lower() in _NULL and _base(arm) is not str:
        return None
    try:
        return _coerce(value, arm)
    except _Invalid:
        raise _Invalid(f"{describe(arm)}, or null") from None


def _coerce_tuple(value: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    if len(args) != 2 or args[1] is not Ellipsis:
        raise TypeError(f"only `tuple[X, ...]` is supported, not tuple{list(args)}")
    entry_hint = args[0]
    if isinstance(value, Mapping):
        raise _Invalid(describe(tuple[entry_hint, ...]))
    entries = value if isinstance(value, (list, tuple)) else [value]  # one value: a one-entry list
    coerced = []
    for entry in entries:
        try:
            coerced.append(_coerce(entry, entry_hint))
        except _Invalid as error:
            raise _Invalid(f"entry {entry!r}: {error.allowed}") from None
    return tuple(coerced)


def _coerce_mapping(value: Any, args: tuple[Any, ...]) -> dict[Any, Any]:
    key_hint, value_hint = args or (Any, Any)
    if not isinstance(value, Mapping):
        raise _Invalid(describe(Mapping[key_hint, value_hint]))
    coerced = {}
    for key, item in value.items():
        try:
            coerced[_coerce(key, key_hint)] = _coerce(item, value_hint)
        except _Invalid as error:
            raise _Invalid(f"entry {key!r}: {error.allowed}") from None
    return coerced


def _choose(value: Any, choices: list[str]) -> str:
    if isinstance(value, str) and value in choices:
        return value
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise _Invalid(f"must be one of {', '.join(sorted(choices))}{hint}")


def _parse_number(value: Any) -> int | float | None:
    """A number from a number or a numeric string (``"2e-4"``, ``"1_000"``, ``" 8 "``); None otherwise."""
    if isinstance(value, bool):
        return None  # True is an int to Python, never a number to a user
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        text = value.strip()
        for parse in (int, float):
            try:
                return parse(text)
            except ValueError:
                continue
    return None


def _to_int(value: Any) -> int:
    number = _parse_number(value)
    if isinstance(number, float) and math.isfinite(number) and number.is_integer():
        return int(number)  # 1e6, 8.0
    if not isinstance(number, int):
        raise _Invalid("must be an integer")
    return number


def _to_float(value: Any) -> float:
    number = _parse_number(value)
    if number is None or not math.isfinite(number):
        raise _Invalid("must be a finite number")
    return float(number)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _Invalid("must be true or false")


# ---- what a hint allows, in words ----------------------------------------------------------------------------
def _base(hint: Any) -> Any:
    return typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint


def describe(hint: Any, plural: bool = False) -> str:
    """``Annotated[int, Range(ge=1)]`` -> "must be an integer >= 1" (``plural``: "integers >= 1")."""
    text = _noun(hint, plural)
    return text if plural else f"must be {text}"


def _noun(hint: Any, plural: bool = False) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        noun = _noun(args[0], plural)
        for item in hint.__metadata__:
            if isinstance(item, Range):
                noun += f" {item.describe()}" + (f" ({item.why})" if item.why else "")
            if isinstance(item, OneOf):
                noun = f"{'values among' if plural else 'one of'} {', '.join(item.names())}"
        return noun
    if origin in (Union, types.UnionType):
        return f"{_noun(next(a for a in args if a is not type(None)), plural)}, or null"
    if origin is Literal:
        return f"{'values among' if plural else 'one of'} {', '.join(sorted(str(arg) for arg in args))}"
    if origin is tuple:
        return f"a list of {_noun(args[0], plural=True)}"
    if origin in (Mapping, dict):
        key, value = args or (Any, Any)
        return f"a mapping of {_noun(key, True)} to {_noun(value, True)}"
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__} fields ({', '.join(field_hints(hint))})"
    nouns = {
        int: ("an integer", "integers"),
        float: ("a finite number", "finite numbers"),
        str: ("a string", "strings"),
        bool: ("true or false", "true or false values"),
    }
    singular, many = nouns.get(hint, ("a value", "values"))
    return many if plural else singular
