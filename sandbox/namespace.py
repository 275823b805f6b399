"""The restricted globals a filter runs with: fresh for every run, built by one factory.

Filters reach only the batch view, the helper library and a short list of harmless builtins.
Attribute access is allow-listed per type: everything not listed here (frames, code objects,
exceptions' internals, ``str.format``, numpy internals) is unreachable even when its name has
no underscore.
"""

from __future__ import annotations

import operator
import re
import types
from collections.abc import Callable
from typing import Any

from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence

from sandbox import helpers
from sandbox.view.columns import AlertsView, Column, ListColumn, _Group
from sandbox.view.record import PUBLIC_ATTRS as _ALERT_ATTRS
from sandbox.view.record import AlertRecord

__all__ = ["make_globals"]

_SAFE_BUILTINS: dict[str, Any] = {
    name: getattr(__import__("builtins"), name)
    for name in (
        "abs",
        "all",
        "any",
        "bool",
        "dict",
        "divmod",
        "enumerate",
        "float",
        "int",
        "isinstance",
        "len",
        "list",
        "max",
        "min",
        "range",
        "reversed",
        "round",
        "set",
        "sorted",
        "str",
        "sum",
        "tuple",
        "zip",
        "frozenset",
        "ValueError",
        "TypeError",
    )
}
_SAFE_BUILTINS.update({"True": True, "False": False, "None": None})

# Public attributes that restricted code may read, per type. Our view types expose only
# methods that return new read-only columns.
_ALLOWED_ATTRS: dict[type, frozenset[str]] = {
    Column: Column._public,
    ListColumn: ListColumn._public,
    str: frozenset(
        {"startswith", "endswith", "lower", "upper", "strip", "split", "replace", "join", "isdigit"}
    ),
    list: frozenset({"append", "extend", "index", "count", "sort"}),
    dict: frozenset({"get", "keys", "values", "items"}),
    tuple: frozenset({"index", "count"}),
    set: frozenset({"add"}),
    float: frozenset({"is_integer"}),
    **_ALERT_ATTRS,
}
# Everything else (functions, generators, exceptions, types, helper results that are not
# listed) has no readable attribute at all: a generator's ``gi_frame``, a function's
# ``__globals__`` or an exception's ``__traceback__`` are out of reach even without underscores.
_VIEW_TYPES = (AlertsView, _Group)
_WRITABLE = (list, dict, set)


def _getattr(obj: Any, name: str, default: Any = None) -> Any:
    if name.startswith(
        "_"
    ):  # RestrictedPython rejects these at compile time; never rely on it alone
        raise AttributeError(f"`.{name}` is not available in filters")
    if type(obj) in _VIEW_TYPES:
        return getattr(obj, name)
    if type(obj) is helpers.Namespace:
        return obj.lookup(name)
    allowed = _ALLOWED_ATTRS.get(type(obj))
    if allowed is None or name not in allowed:
        raise AttributeError(f"`.{name}` of a {type(obj).__name__} is not available in filters")
    return getattr(obj, name)


# Exact types only (``type(obj) in``): a subclass could override ``__getitem__``/``__iter__``.
_INDEXABLE = frozenset({list, tuple, dict, str, range, AlertsView, _Group, AlertRecord})
_ITERABLE = frozenset(
    {
        list,
        tuple,
        dict,
        set,
        frozenset,
        str,
        range,
        Column,
        AlertRecord,
        enumerate,
        zip,
        reversed,
        type({}.keys()),
        type({}.values()),
        type({}.items()),
    }
)


def _getitem(obj: Any, key: Any) -> Any:
    if type(obj) in _INDEXABLE:
        return obj[key]
    raise TypeError(f"a {type(obj).__name__} cannot be indexed in filters")


def _getiter(obj: Any) -> Any:
    if type(obj) in _ITERABLE:
        return iter(obj)
    if type(obj) is types.GeneratorType:
        return obj  # its frame stays out of reach: generators have no allowed attributes
    raise TypeError(f"a {type(obj).__name__} cannot be iterated in filters")


def _apply(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``f(*args, **kwargs)`` in restricted code; the arguments are already guarded values."""
    return fn(*args, **kwargs)


def _write(obj: Any) -> Any:
    if isinstance(obj, _WRITABLE):
        return obj
    raise TypeError(f"a {type(obj).__name__} is read-only in filters")


_INPLACE = {
    "+=": operator.iadd,
    "-=": operator.isub,
    "*=": operator.imul,
    "/=": operator.itruediv,
    "//=": operator.ifloordiv,
    "%=": lambda a, b: _mod(a, b),
    "**=": operator.ipow,
    "&=": operator.iand,
    "|=": operator.ior,
    "^=": operator.ixor,
}


def _inplacevar(op: str, x: Any, y: Any) -> Any:
    fn = _INPLACE.get(op)
    if fn is None:
        raise TypeError(f"`{op}` is not available in filters")
    return fn(x, y)


# CPython's default repr names an object's address (``<function f at 0x7f3a...>``): a filter
# must not learn addresses (id() and repr() are refused for that reason), so every way it can
# turn a value into text (str(), f-strings, %-formatting) drops them.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_PLAIN = frozenset({str, int, float, bool, type(None)})


def text_of(obj: Any, conversion: Callable[[Any], str] = str) -> str:
    """``str(obj)`` (or ``conversion(obj)``) without memory addresses."""
    text = conversion(obj)
    return text if type(obj) in _PLAIN else _ADDRESS.sub("", text)


class _StrType(type):
    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, str)

    def __subclasscheck__(cls, sub: Any) -> bool:
        return issubclass(sub, str)


class _Str(metaclass=_StrType):
    """The filters' ``str``: ``str(x)`` without addresses; ``isinstance(x, str)`` as usual."""

    def __new__(cls, obj: Any = "") -> str:  # type: ignore[misc]
        return text_of(obj)


_SAFE_BUILTINS["str"] = _Str


def _format_value(obj: Any, conversion: int) -> Any:
    """An f-string's ``{obj}``, ``{obj!s}``, ``{obj!r}``, ``{obj!a}``: plain values pass as
    they are (so format specs work), anything else as its text without addresses."""
    if conversion == ord("r"):
        return text_of(obj, repr)
    if conversion == ord("a"):
        return text_of(obj, ascii)
    return obj if type(obj) in _PLAIN else text_of(obj)


def _plain(obj: Any) -> Any:
    return obj if type(obj) in _PLAIN else text_of(obj)


def _mod(a: Any, b: Any) -> Any:
    """``a % b``; for %-formatting of a string, every argument is made plain first."""
    if isinstance(a, str):
        if type(b) is tuple:
            b = tuple(_plain(x) for x in b)
        elif type(b) is dict:
            b = {k: _plain(v) for k, v in b.items()}
        else:
            b = _plain(b)
    return a % b


def make_globals() -> dict[str, Any]:
    """A fresh namespace for one run of one filter: nothing in it outlives the run."""
    ns: dict[str, Any] = {
        "__builtins__": dict(_SAFE_BUILTINS),
        "__name__": "filter",
        "_getattr_": _getattr,
        "_getitem_": _getitem,
        "_getiter_": _getiter,
        "_write_": _write,
        "_inplacevar_": _inplacevar,
        "_apply_": _apply,
        "_format_value_": _format_value,
        "_mod_": _mod,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_unpack_sequence_": guarded_unpack_sequence,
    }
    ns.update(helpers.exported())
    return ns
