"""Typed settings: frozen dataclasses filled from TOML tables and `--set key=value` overrides.

The bottom of the package: it imports nothing from longrec, so every stage (ingest options, protocols, searchers,
models, training) can describe its settings as a dataclass and report problems the same way. `fill_dataclass`
collects every problem (unknown key with a did-you-mean hint, wrong type, rejected value) instead of stopping at the
first, and `ConfigError` lists them all. `--set` values are TOML values, exactly as in the files (`true`,
`[16, 8]`, `{buy = 2.0}`); a bare word that is not a TOML value (`din`, `data/synth`) is taken as a string.

Example:
    >>> parse_overrides(["train.lr=0.01", "model.head_hidden=[16, 8]", "model.name=din"])
    {'train': {'lr': 0.01}, 'model': {'head_hidden': [16, 8], 'name': 'din'}}
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from typing import Any, TypeVar

__all__ = [
    "RESUME_APPLY",
    "RESUME_FREE",
    "ConfigError",
    "dotted_keys",
    "fill_dataclass",
    "merge",
    "parse_overrides",
    "parse_value",
    "resume_rule",
]

T = TypeVar("T")

# A `--set` value that fails to parse as TOML is a plain string unless it opens like a TOML (or Python) structure.
_STRUCTURED = ("[", "{", "(", '"', "'")


# How a setting may change when a run is resumed (`dataclasses.field(metadata=...)`); a field without it is fixed:
# changing it would make the checkpoint, the data position or the best-so-far meaningless, so --resume refuses.
RESUME_FREE: dict[str, str] = {"resume": "free"}  # how the run executes, not what it computes (threads, device, ...)
RESUME_APPLY: dict[str, str] = {"resume": "apply"}  # takes effect from the resumed step on (learning rate, L2, ...)


def resume_rule(f: dataclasses.Field[Any]) -> str:
    """'free', 'apply' or 'fixed': how field `f` may change on resume (see `RESUME_FREE`, `RESUME_APPLY`)."""
    return str(f.metadata.get("resume", "fixed"))


class ConfigError(ValueError):
    """One or more config problems, all listed."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in {source}:\n{lines}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check `value` against annotation `tp`; return (ok, value converted to the annotated container type)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True, value
    if origin in (types.UnionType, typing.Union):
        for arg in typing.get_args(tp):
            ok, out = _coerce(value, arg)
            if ok:
                return True, out
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, str), value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False, value
        args = typing.get_args(tp)
        item_types = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(item_types) != len(value):
            return False, value
        out = [_coerce(v, t) for v, t in zip(value, item_types, strict=True)]
        return all(ok for ok, _ in out), tuple(v for _, v in out)
    if origin is list:
        if not isinstance(value, list | tuple):
            return False, value
        (arg,) = typing.get_args(tp)
        out = [_coerce(v, arg) for v in value]
        return all(ok for ok, _ in out), [v for _, v in out]
    if origin is dict or tp is dict:
        return isinstance(value, dict), value
    return isinstance(value, tp) if isinstance(tp, type) else True, value


def _type_problem(where: str, tp: Any, value: Any) -> str:
    text = f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}"
    if tp is bool and isinstance(value, str) and value.lower() in ("true", "false"):
        text += f" (TOML booleans are lowercase: {value.lower()})"
    return text


def fill_dataclass(cls: type[T], values: dict[str, Any], prefix: str, problems: list[str]) -> T | None:
    """Build dataclass `cls` from `values`, appending every problem to `problems` (returns None if any).

    Nested dataclass fields are filled recursively; unknown keys get did-you-mean hints; `__post_init__`
    ValueErrors are recorded, not raised.
    """
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    before = len(problems)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        where = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(names)}"
            problems.append(f"{where}: unknown key ({hint})")
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                problems.append(f"{where}: expected a table, got {type(value).__name__} {value!r}")
                continue
            nested = fill_dataclass(typing.cast(type, tp), value, f"{where}.", problems)
            if nested is not None:
                kwargs[key] = nested
            continue
        ok, converted = _coerce(value, tp)
        if not ok:
            problems.append(_type_problem(where, tp, value))
            continue
        kwargs[key] = converted
    bad_keys = len(problems) > before
    try:
        built = cls(**kwargs)  # also with bad keys left out, so __post_init__ problems are reported in the same run
    except ConfigError as err:
        problems.extend(err.problems)
        return None
    except (ValueError, TypeError) as err:
        problems.append(
            str(err) if str(err).startswith(cls.__name__) else f"{prefix.rstrip('.') or cls.__name__}: {err}"
        )
        return None
    return None if bad_keys else built


def parse_value(raw: str, key: str = "value") -> Any:
    """One `--set` value as TOML (`0.01`, `true`, `[16, 8]`, `{buy = 2.0}`, `"text"`); a bare word is a string.

    Raises:
        ConfigError: the value opens like a structure (`[`, `{`, `(`, a quote) but is not valid TOML.
    """
    text = raw.strip()
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError as err:
        if not text.startswith(_STRUCTURED):
            return text
        hint = " (arrays are written [1, 2], tables {key = 1}, booleans true/false)" if text[0] == "(" else ""
        raise ConfigError([f"{key}={raw}: not a TOML value{hint}: {err}"], "--set") from err


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["train.lr=0.01", "model.name=din"]` -> nested dict; values as in `parse_value`.

    Raises:
        ConfigError: an item without `=`, or a value that is not TOML (every such item, at once).
    """
    out: dict[str, Any] = {}
    problems: list[str] = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"{item!r}: expected key=value, e.g. train.lr=0.01")
            continue
        try:
            value = parse_value(raw, key)
        except ConfigError as err:
            problems.extend(err.problems)
            continue
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(f"{key}: '{part}' is set to a value by another --set, so it cannot hold keys")
                break
            node = child
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError(problems, "--set")
    return out


def dotted_keys(tree: dict[str, Any], prefix: str = "") -> set[str]:
    """Every key of a nested dict, dotted (`{"a": {"b": 1}}` -> {"a", "a.b"})."""
    keys: set[str] = set()
    for key, value in tree.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= dotted_keys(value, f"{prefix}{key}.")
    return keys


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra` laid over it, tables merged key by key (neither argument is changed)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
