"""Configuration errors, one line per bad field, naming the field, the value and the nearest known name."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ConfigError(ValueError):
    """A configuration problem, with every bad field named."""


def describe_error(err: dict, model: type[BaseModel]) -> str:
    """`loc: message (got value)` of one pydantic error."""
    loc = ".".join(str(p) for p in err["loc"]) or "(root)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        return f"{loc}: required field is missing"
    shown = short_value(err.get("input"))
    got = "" if shown is None or shown in msg else f" (got {shown})"  # a section is never shown; a value once
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown field{got}{unknown_field_hint(str(err['loc'][-1]), fields_at(model, err['loc'][:-1]))}"
    return f"{loc}: {msg}{got}"


def short_value(value: Any, limit: int = 60) -> str | None:
    """repr of a scalar, cut to `limit` characters; None for sections (dicts, lists), never shown whole."""
    if isinstance(value, (dict, list, tuple, set)):
        return None
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def unknown_field_hint(name: str, known: list[str]) -> str:
    """'; did you mean 'x'?' for the nearest known field name, else the known names (few) or nothing."""
    import difflib

    near = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if near:
        return f"; did you mean {near[0]!r}?"
    return f"; known: {', '.join(sorted(known))}" if 0 < len(known) <= 12 else ""


def fields_at(model: type[BaseModel], path: tuple) -> list[str]:
    """Field names of the model(s) found at `path` (a pydantic error's loc) inside `model`."""
    import types
    import typing

    def step(tp: Any, part: Any) -> list[Any]:
        origin, targs = typing.get_origin(tp), typing.get_args(tp)
        if origin is typing.Annotated:
            return step(targs[0], part)
        if origin in (typing.Union, types.UnionType):
            found = [r for a in targs for r in step(a, part)]
            # a tagged union puts the tag in the path: step over it
            return found or [a for a in targs if isinstance(a, type) and issubclass(a, BaseModel)]
        if origin in (list, tuple, set, frozenset) and isinstance(part, int):
            return [targs[0]] if targs else []
        if origin is dict:
            return [targs[1]] if len(targs) == 2 else []
        if isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            return [tp.model_fields[part].annotation]
        return []

    found: list[Any] = [model]
    for part in path:
        found = [r for tp in found for r in step(tp, part)]
    names: set[str] = set()
    for tp in found:
        for m in [tp, *typing.get_args(tp)]:
            if isinstance(m, type) and issubclass(m, BaseModel):
                names.update(m.model_fields)
    return sorted(names)
