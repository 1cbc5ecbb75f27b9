"""Pydantic validation errors -> one ``file:line:col: dotted.path: message`` line per problem.

Pydantic locations name union members and validator functions besides keys
(``optimizer.scheduler.cosine.warmup_epochs``); only the parts that are keys of the data
are kept, so each line names what the user wrote and points at where they wrote it.
"""

from __future__ import annotations

import difflib
import json
import re
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from recipec.errors import format_path
from recipec.recipe._fields import PATTERN_RULES
from recipec.recipe._yaml import Position, RecipePath, SourceMap
from recipec.recipe.archs import arch_problem
from recipec.recipe.spec import FieldProblems, Recipe

_BOUNDS = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"),
           "less_than": ("<", "lt"), "less_than_equal": ("<=", "le")}
_SHAPES = {
    "int_parsing": "a whole number", "int_type": "a whole number", "int_from_float": "a whole number",
    "float_parsing": "a number", "float_type": "a number", "bool_parsing": "true or false", "bool_type": "true or false",
    "string_type": "text", "list_type": "a list", "tuple_type": "a list", "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)", "model_attributes_type": "a mapping (key: value)",
}


def located_problems(error: ValidationError, data: dict[str | int, Any], sources: SourceMap) -> list[str]:
    """Every problem of ``error``, located in ``sources``, sorted by file and position."""
    found: list[tuple[Position | None, str]] = []
    for err in error.errors(include_url=False):
        for path, message, at, key in _explain(err, data):
            where = sources.locate(at, key=key)
            text = f"{format_path(path)}: {message}" if path else message
            found.append((where, f"{where}: {text}" if where else text))
    found.sort(key=lambda item: _order(item[0]))
    return list(dict.fromkeys(text for _, text in found))


def _order(where: Position | None) -> tuple[bool, str, int, int]:
    if where is None:
        return True, "", 0, 0
    return False, where.file, where.line or 0, where.col or 0


def _explain(err: ErrorDetails, data: Any) -> list[tuple[RecipePath, str, RecipePath, bool]]:
    """(path shown, message, path located, whether to point at the key) for one pydantic error."""
    kind, loc, ctx = err["type"], tuple(err["loc"]), err.get("ctx") or {}
    if kind == "value_error" and isinstance(ctx.get("error"), FieldProblems):
        base = _data_path(loc, data)
        return [((*base, *rel), msg, (*base, *rel), False) for rel, msg in ctx["error"].problems]
    if loc and loc[-1] == "[key]":
        path = _data_path(loc[:-1], data)
        return [(path, f"key {_message(err, path)}", path, True)]
    if kind == "missing" and loc:
        parent = _data_path(loc[:-1], data)
        if isinstance(loc[-1], int):  # a tuple with too few items
            size = len(get_args(_annotation_at(loc[:-1]))) or "more"
            return [(parent, f"must have {size} items, got {show_value(err['input'])}", parent, False)]
        # at the key of the mapping that lacks it, where an editor puts "Missing property"
        return [((*parent, loc[-1]), _missing(loc), parent, True)]
    path = _data_path(loc, data)
    if kind in ("extra_forbidden", "invalid_key"):
        return [(path, _unknown_key(loc), path, True)]
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        field = ctx.get("discriminator", "").strip("'")
        field = field if field.isidentifier() else "name"  # a callable discriminator (data.augment) reads `name`
        tags = ", ".join(_tags(_annotation_at(loc)))
        if kind == "union_tag_not_found":
            return [(path, f"needs {field}: one of {tags}", path, True)]
        tag = ctx.get("tag", "")
        hint = _did_you_mean(tag, _tags(_annotation_at(loc)))
        return [((*path, field), f"must be one of {tags}, got {tag!r}{hint}", (*path, field), False)]
    return [(path, _message(err, path), path, False)]


def _data_path(loc: tuple[Any, ...], data: Any) -> RecipePath:
    """The parts of a pydantic location that are keys or indices of ``data``, in the data's own types."""
    path: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict):
            key = next((k for k in (part, str(part), _as_int(part)) if k is not None and k in node), None)
            if key is not None:
                path.append(key)
                node = node[key]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]
    return tuple(path)


def _as_int(part: Any) -> int | None:
    return int(part) if isinstance(part, str) and re.fullmatch(r"-?[0-9]+", part) else None


def _message(err: ErrorDetails, path: RecipePath) -> str:
    kind, ctx, got = err["type"], err.get("ctx") or {}, show_value(err["input"])
    if kind in _BOUNDS:
        op, name = _BOUNDS[kind]
        return f"must be {op} {_number(ctx[name])}, got {got}"
    if kind == "literal_error":
        choices = re.findall(r"'((?:[^'\\]|\\.)*)'", str(ctx.get("expected", "")))
        value = err["input"]
        return f"must be one of {', '.join(choices)}, got {got}{_did_you_mean(value, choices)}"
    if kind == "string_pattern_mismatch":
        generic = tuple("*" if isinstance(p, int) else str(p) for p in path)
        hint = PATTERN_RULES.get(str(ctx.get("pattern")), f"must match the pattern {ctx.get('pattern')}")
        known = arch_problem(err["input"]) if generic == ("model", "arch") and isinstance(err["input"], str) else None
        return known or f"{hint}, got {got}"  # an architecture: the nearest names
    if kind in _SHAPES:
        return f"must be {_SHAPES[kind]}, got {got}"
    if kind in ("too_short", "too_long"):
        bound = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        least = "at least" if kind == "too_short" else "at most"
        return f"must have {least} {bound} item{'s' if bound != 1 else ''}, got {ctx.get('actual_length')}"
    if kind == "value_error" and ctx.get("error") is not None:
        return str(ctx["error"])
    text = err["msg"]
    return f"{text[:1].lower()}{text[1:]}, got {got}"


def _missing(loc: tuple[Any, ...]) -> str:
    model = _annotation_at(loc[:-1])
    info = model.model_fields.get(str(loc[-1])) if _is_model(model) else None
    if info is not None and info.examples:
        example = _yaml_inline(info.examples[0])
        return f"missing (required), e.g. {loc[-1]}: {example}"
    return "missing (required)"


def _unknown_key(loc: tuple[Any, ...]) -> str:
    key = loc[-1] if loc else "?"
    model = _annotation_at(loc[:-1])
    names = list(model.model_fields) if _is_model(model) else []
    takes = f" ({_tags(model)[0]} takes {', '.join(names)})" \
        if getattr(model, "list_options", False) else ""  # data.augment items: each name has its options
    return f"unknown key {key!r}{_did_you_mean(key, names)}{takes}"


def _did_you_mean(value: Any, choices: list[str]) -> str:
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _annotation_at(loc: tuple[Any, ...]) -> Any:
    """The type the recipe schema expects at a pydantic location (None when it cannot tell)."""
    tp: Any = Recipe
    for part in loc:
        tp = _strip(tp)
        if _is_model(tp):
            info = tp.model_fields.get(str(part))
            if info is None:
                return None
            tp = info.annotation
        elif get_origin(tp) in (Union, types.UnionType):
            # A discriminated union: the location names the member by its tag.
            tp = next((m for m in get_args(tp) if part in _tags(m)), tp)
        elif get_origin(tp) is list and isinstance(part, int):
            tp = get_args(tp)[0]
        elif get_origin(tp) is tuple and isinstance(part, int):
            args = get_args(tp)
            tp = args[part] if part < len(args) else None
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
    return _strip(tp)


def _strip(tp: Any) -> Any:
    """``Annotated[X, ...]`` -> X and ``X | None`` -> X."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp):
            rest = [a for a in get_args(tp) if a is not type(None)]
            tp = rest[0] if len(rest) == 1 else Union[tuple(rest)]  # noqa: UP007
        else:
            return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _tags(tp: Any) -> list[str]:
    """The ``name`` choices of a model, or of every member of a union of models."""
    members = get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)
    tags: list[str] = []
    for member in members:
        member = _strip(member)  # Annotated[Model, Tag(...)] in a union with a callable discriminator
        info = member.model_fields.get("name") if _is_model(member) else None
        if info is not None and get_origin(info.annotation) is Literal:
            tags.extend(get_args(info.annotation))
    return tags


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def show_value(value: Any) -> str:
    """A value as the user wrote it, shortened."""
    if value is None or isinstance(value, (bool, list, dict)):
        try:
            text = json.dumps(value, default=str)
        except (TypeError, ValueError):  # keys json cannot write, e.g. dates
            text = str(value)
    elif isinstance(value, str):
        text = repr(value)
    else:
        text = str(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _yaml_inline(value: Any) -> str:
    """``value`` as YAML on one line: ``resnet18``, ``[512]``, ``{metric: val_acc}``."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**9).splitlines()[0]
