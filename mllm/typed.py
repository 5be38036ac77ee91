"""Typed dataclass configs from plain data (YAML / JSON / ``--set key=value``), for every config we have.

``from_dict(cls, data)`` converts each field to its declared type (``learning_rate: 2e-5``, which PyYAML
reads as the *string* '2e-5', becomes the float 2e-05) or raises a ValueError naming the field and the
value; unknown fields are errors that list close matches. ``apply_overrides(data, ["a.b=1"])`` applies
command-line overrides to the plain data before ``from_dict`` sees it, so YAML and ``--set`` values go
through the same conversion::

    data = apply_overrides(yaml.safe_load(open("run.yaml")), ["learning_rate=2e-5", "lora.r=8"])
    cfg = from_dict(TrainConfig, data, where="run.yaml")
"""
from __future__ import annotations

import dataclasses
import difflib
import enum
import typing
from typing import Any, Dict, Iterable, List, Sequence, Union

import yaml

_NONE = type(None)


def close_matches(name: str, known: Iterable[str], n: int = 3) -> List[str]:
    return difflib.get_close_matches(name, sorted(set(known)), n=n, cutoff=0.6)


def unknown_field_error(name: str, known: Iterable[str], where: str = "") -> ValueError:
    near = close_matches(name.rsplit(".", 1)[-1], known)
    hint = f"; did you mean {', '.join(near)}?" if near else f"; known: {', '.join(sorted(set(known)))}"
    return ValueError(f"{where + ': ' if where else ''}unknown config field {name!r}{hint}")


def from_dict(cls: type, data: Any, path: str = "", where: str = "") -> Any:
    """An instance of dataclass ``cls`` from a mapping, every field converted to its declared type."""
    try:
        return _from_dict(cls, data, path)
    except ValueError as e:
        raise ValueError(f"{where}: {e}" if where else str(e)) from None


def _from_dict(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"config field {path or '<root>'!r}: expected a mapping, got {type(data).__name__} "
                         f"{data!r}")
    try:
        hints = typing.get_type_hints(cls)
    except NameError:  # a name imported only for type checkers: that field is taken as it is
        import sys

        module = vars(sys.modules[cls.__module__])
        hints = typing.get_type_hints(cls, localns=_Fallback(module))
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for name in data:
        if name not in fields:
            raise unknown_field_error(_join(path, name), fields)
    kwargs = {name: coerce(hints[name], value, _join(path, name)) for name, value in data.items()}
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"config field(s) {', '.join(repr(_join(path, m)) for m in missing)} required")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # __post_init__ checks
        raise ValueError(f"{path or cls.__name__}: {e}") from None


class _Fallback(dict):
    def __init__(self, module):
        super().__init__()
        self._module = module

    def __missing__(self, key):
        import builtins

        if key in self._module:
            return self._module[key]
        return getattr(builtins, key, Any)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _bad(path: str, value: Any, what: str) -> ValueError:
    return ValueError(f"config field {path!r}: expected {what}, got {value!r} ({type(value).__name__})")


def coerce(tp: Any, value: Any, path: str) -> Any:
    """``value`` converted to the type ``tp`` (a typing annotation), or a ValueError naming ``path``."""
    if tp is Any or tp is object:
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return value if isinstance(value, tp) else _from_dict(tp, value, path)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        if value is None:
            if _NONE in args:
                return None
            raise _bad(path, value, _name(tp))
        errors = []
        # exact type first, so Union[int, List[int]] keeps an int an int and a str stays a str for Union[X, str]
        for arg in sorted((a for a in args if a is not _NONE), key=lambda a: not _is_instance(value, a)):
            try:
                return coerce(arg, value, path)
            except ValueError as e:
                errors.append(e)
        raise _bad(path, value, _name(tp))
    if origin is typing.Literal:
        if value in args:
            return value
        raise _bad(path, value, f"one of {', '.join(map(repr, args))}")
    if origin in (list, List, Sequence) or tp in (list,):
        inner = args[0] if args else Any
        items = value if isinstance(value, (list, tuple)) else [value]
        return [coerce(inner, v, f"{path}[{i}]") for i, v in enumerate(items)]
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise _bad(path, value, _name(tp))
        if args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _bad(path, value, f"{len(args)} items")
            return tuple(coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        return tuple(coerce(inner, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Dict) or tp is dict:
        if not isinstance(value, dict):
            raise _bad(path, value, "a mapping")
        vt = args[1] if len(args) == 2 else Any
        return {k: coerce(vt, v, _join(path, str(k))) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLS:
            return _BOOLS[value.strip().lower()]
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise _bad(path, value, "true or false")
    if tp is int:
        if isinstance(value, bool):
            raise _bad(path, value, "an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value.strip())
            except ValueError:
                raise _bad(path, value, "an integer") from None
            if f.is_integer():
                return int(f)
        raise _bad(path, value, "an integer")
    if tp is float:
        if isinstance(value, bool):
            raise _bad(path, value, "a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())  # '2e-5': YAML 1.1 needs a dot to read it as a number
            except ValueError:
                raise _bad(path, value, "a number") from None
        raise _bad(path, value, "a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _bad(path, value, "a string")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise _bad(path, value, f"one of {', '.join(str(m.value) for m in tp)}") from None
    return value  # a type we have no rule for (e.g. a library's own class): the consumer checks it


_BOOLS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _is_instance(value: Any, tp: Any) -> bool:
    base = typing.get_origin(tp) or tp
    if base is float:
        return isinstance(value, float)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if base in (list, List, Sequence):
        return isinstance(value, list)
    return isinstance(base, type) and isinstance(value, base)


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


# ---- overrides -----------------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """A command-line value with YAML rules (``2`` -> int, ``true`` -> bool, ``[1,2]`` -> list); the field's
    declared type then converts it (``2e-5`` -> float)."""
    return yaml.safe_load(text)


def apply_overrides(data: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """A copy of the plain mapping ``data`` with each ``dotted.key=value`` set (missing levels are created;
    whether the key exists is checked by ``from_dict``, which names it)."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} must look like key.sub=value")
        parts = key.strip().split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {'.'.join(parts[:i + 1])!r} is not a mapping")
        node[parts[-1]] = parse_value(raw)
    return data
