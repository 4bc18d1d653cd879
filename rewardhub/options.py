"""Typed options from strings: one coercion used by CLI flags, ``--reward-arg key=value`` and YAML configs.

A provider declares its options by writing a typed ``__init__``; a config is a dataclass. Both are
validated here the same way, and every problem is reported at once (:class:`~rewardhub.errors.ConfigError`).
"""

from __future__ import annotations

import contextlib
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Union

from rewardhub.errors import ConfigError

_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n"}


def type_name(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return "any"
    if typing.get_origin(annotation) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def coerce(value: Any, annotation: Any) -> Any:
    """Convert ``value`` (often a string from the command line) to ``annotation``; raise ValueError if it can't."""
    if annotation in (inspect.Parameter.empty, Any):
        return value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() in {"none", "null"})
        if is_none and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            with contextlib.suppress(ValueError, TypeError):
                return coerce(value, arg)
        raise ValueError(f"{value!r} is not a {type_name(annotation)}")
    if origin is Literal:
        for choice in args:
            if value == choice or str(value) == str(choice):
                return choice
        raise ValueError(f"{value!r} is not one of {', '.join(repr(a) for a in args)}")
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        item = args[0] if args else Any
        items = value.split(",") if isinstance(value, str) else list(value)
        items = [coerce(v.strip() if isinstance(v, str) else v, item) for v in items if v != ""]
        return tuple(items) if origin is tuple or annotation is tuple else items
    if origin is dict or annotation is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{value!r} is not a mapping")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ValueError(f"{value!r} is not a boolean (use true/false)")
    if annotation is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{value!r} is not an integer")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not an integer") from None
    if annotation is float:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a number") from None
    if annotation is str:
        if isinstance(value, (Mapping, list)):
            raise ValueError(f"{value!r} is not a string")
        return str(value)
    if annotation is Path:
        return Path(value)
    return value


def bind_options(target: Callable, options: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """Check ``options`` against ``target``'s keyword parameters and coerce them to the annotated types.

    Args:
        target: a class (its ``__init__`` is read) or function whose parameters are the options.
        options: raw values, e.g. ``{"timeout_s": "5"}``.
        owner: how to name the target in errors, e.g. ``"reward 'verifier'"``.

    Raises:
        ConfigError: listing every unknown, missing or ill-typed option, with the accepted ones.
    """
    fn = target.__init__ if isinstance(target, type) else target
    signature = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to raw annotations
        hints = {}
    params = {
        name: p
        for name, p in signature.parameters.items()
        if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    accepted = ", ".join(f"{n}: {type_name(hints.get(n, p.annotation))}" for n, p in params.items()) or "none"
    problems, bound = [], {}
    for key, raw in options.items():
        if key not in params:
            if takes_any:
                bound[key] = raw
                continue
            problems.append(f"{owner} has no option {key!r}; accepted options: {accepted}")
            continue
        annotation = hints.get(key, params[key].annotation)
        try:
            bound[key] = coerce(raw, annotation)
        except ValueError as exc:
            problems.append(f"{owner} option {key!r}: {exc} (expected {type_name(annotation)})")
    for name, p in params.items():
        if p.default is inspect.Parameter.empty and name not in bound:
            problems.append(f"{owner} needs option {name!r} ({type_name(hints.get(name, p.annotation))})")
    if problems:
        raise ConfigError(problems, header=f"invalid options for {owner}")
    return bound


def parse_key_values(pairs: list[str] | None, flag: str) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; a malformed pair names the flag and the pair."""
    out: dict[str, str] = {}
    problems = []
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            problems.append(f"{flag} {pair!r} is not key=value")
            continue
        out[key.strip()] = value.strip()
    if problems:
        raise ConfigError(problems)
    return out


def describe_options(target: Callable) -> list[dict[str, Any]]:
    """The options ``target`` declares, as :func:`bind_options` reads them, with the help its docstring gives.

    Args:
        target: a class (its ``__init__``'s parameters; help from the ``Args:`` section of the class or
            ``__init__`` docstring, where ``a, b: text`` documents both) or a function.

    Returns:
        One dict per option, in declaration order: ``name``, ``type`` (as in error messages), ``required``,
        ``default`` (None when required; tuples as lists) and ``help`` ("" when undocumented).
    """
    fn = target.__init__ if isinstance(target, type) else target
    signature = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    docs = docstring_args(inspect.getdoc(fn) or "")
    if isinstance(target, type):  # the class docstring documents the constructor's arguments
        docs.update(docstring_args(inspect.getdoc(target) or ""))
    options = []
    for name, p in signature.parameters.items():
        if name == "self" or p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        required = p.default is inspect.Parameter.empty
        default = None if required else p.default
        options.append({"name": name, "type": type_name(hints.get(name, p.annotation)), "required": required,
                        "default": list(default) if isinstance(default, tuple) else default,
                        "help": docs.get(name, "")})
    return options


def docstring_args(doc: str) -> dict[str, str]:
    """``{name: help}`` from a Google-style ``Args:`` section (continuation lines joined; ``a, b:`` both)."""
    lines = doc.expandtabs().splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() in ("Args:", "Arguments:", "Parameters:")), None)
    if start is None:
        return {}
    base = len(lines[start]) - len(lines[start].lstrip())
    entries: list[tuple[list[str], list[str]]] = []
    indent = None
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if depth <= base:
            break  # the next section
        if indent is None:
            indent = depth
        names, sep, text = line.strip().partition(":")
        if depth == indent and sep and all(n.strip().isidentifier() for n in names.split(",")):
            entries.append(([n.strip() for n in names.split(",")], [text.strip()]))
        elif entries:
            entries[-1][1].append(line.strip())
    return {name: _plain(" ".join(t for t in text if t)) for names, text in entries for name in names}


def _plain(text: str) -> str:
    """reST markup as a terminal shows it: ``x`` and :meth:`x` -> `x`."""
    import re

    return re.sub(r":\w+:`([^`]+)`", r"`\1`", text).replace("``", "`")
