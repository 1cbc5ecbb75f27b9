"""Building blocks shared by the recipe sections: the strict base model, located cross-field
problems, regex fields that must compile, and byte sizes written as ``2GB`` or ``500MiB``.

This module never imports torch.
"""

from __future__ import annotations

import re
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

__all__ = ["MAX_BATCH", "MAX_CLASSES", "MAX_EPOCHS", "MAX_INPUT_BYTES", "MAX_LR", "PATTERN_RULES", "SCHEMA_ID",
           "SCHEMA_KEY_RULE", "ByteSize", "FieldProblems", "Regex", "parse_size", "pattern"]

SCHEMA_ID = "https://recipec.dev/schemas/recipe.schema.json"
# a recipe's `$schema` key (for editors; the loader drops it) must say where the schema is
SCHEMA_KEY_RULE = "must be the URL or path of the recipe schema"

# Bounds of numbers: beyond them a value is a typo, or something no machine can hold (each Field says why).
MAX_EPOCHS = 10_000  # the longest schedules in use (MAE: 1600); the plan holds one row per epoch
MAX_BATCH = 65_536  # the largest batches in the literature (LARS/LAMB at 64k); `features --batch-size` too
MAX_CLASSES = 1_000_000  # face-identity label sets are about this; a head beyond holds billions of weights
MAX_LR = 100.0  # large-batch SGD uses up to ~30
MAX_INPUT_BYTES = 2**36  # one float32 input batch (batch_size x in_channels x image_size**2 x 4) above 64 GiB

# What each regex of a text field accepts, said to a reader: recipec's error and the schema's
# patternErrorMessage (editors show it instead of the regex) read the same words. Filled by `pattern`.
PATTERN_RULES: dict[str, str] = {}


def pattern(regex: str, rule: str) -> str:
    """``regex``, recorded with the ``rule`` that says what it accepts (``must be ...``)."""
    assert PATTERN_RULES.setdefault(regex, rule) == rule, f"{regex!r} already says {PATTERN_RULES[regex]!r}"
    return regex


_YAML_NUMBER = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|0o[0-7]+|0x[0-9a-fA-F]+")
_BASE_60 = re.compile(r"[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+")


class BaseSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _scalars(cls, data: Any) -> Any:
        """Numbers are numbers and booleans are booleans, nothing else; a whole-number field takes a whole float.

        Pydantic's lax mode reads ``"3e-4"`` as a number and ``"yes"``, ``"on"`` or ``1`` as true;
        JSON Schema does not, so an editor would flag what recipec accepts. Text or a boolean in a
        number field, and anything but true/false in a boolean field, is replaced by a marker that
        pydantic refuses like any other wrong value, so it is reported with every other problem.
        ``1e3`` (a float in YAML 1.2 and JSON) in a whole-number field is 1000, ``2.5`` is refused.
        """
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, field in cls.model_fields.items():
            # pydantic keeps a field's own Annotated metadata apart from its annotation
            if name in out and not any(isinstance(m, BeforeValidator) for m in field.metadata):
                out[name] = check_numbers(field.annotation, out[name])
        return out


class _Refused:
    """A value of the wrong kind (text or a boolean for a number, anything for a boolean); pydantic refuses it."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        if isinstance(self.value, bool):
            return str(self.value).lower()
        hint = _text_hint(self.value) if isinstance(self.value, str) else ""
        return f"{self.value!r}{f' ({hint})' if hint else ''}"

    __repr__ = __str__


def _text_hint(text: str) -> str:
    """What to write instead of text that some reader takes for a number."""
    bare = text.strip()
    if _BASE_60.fullmatch(bare):  # YAML 1.1's 1:30 (90)
        sign, parts = (-1 if bare.startswith("-") else 1), bare.lstrip("+-").replace("_", "").split(":")
        value = 0
        for part in parts:
            value = value * 60 + int(part)
        return f"YAML 1.2 has no base-60 numbers: write {sign * value}"
    if "_" in bare and _YAML_NUMBER.fullmatch(bare.replace("_", "")):
        return f"YAML 1.2 numbers have no '_': write {bare.replace('_', '')}"
    if _YAML_NUMBER.fullmatch(bare):
        return "text, not a number: write it without quotes"
    return ""


def check_numbers(tp: Any, value: Any) -> Any:
    """``value`` checked against the scalar type ``tp`` wants (see :meth:`BaseSpec._scalars`).

    Whole floats become ints where ``tp`` wants an int; text or a boolean where it wants a number,
    and anything but a boolean where it wants one, become a marker pydantic refuses. Keys of a
    mapping with text keys that YAML reads as numbers (``3: 2.0`` in class_weights) become text,
    as every editor reads them. Lists, tuples, mappings and ``X | None`` are looked into.
    """
    if _checks_itself(tp):
        return value
    tp = _bare(tp)
    if get_origin(tp) in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        if len(members) == 1:
            return check_numbers(members[0], value)
        # Literal | float unions check their own members; look into the one mapping
        mappings = [m for m in members if get_origin(_bare(m)) is dict]
        return check_numbers(mappings[0], value) if isinstance(value, dict) and len(mappings) == 1 else value
    origin, args = get_origin(tp), get_args(tp)
    if tp in (int, float):
        if isinstance(value, (bool, str)):
            return _Refused(value)
        if tp is int and isinstance(value, float) and value.is_integer():
            return int(value)
        return value
    if tp is bool:
        return value if isinstance(value, bool) or value is None or not _scalar(value) else _Refused(value)
    if origin is list and isinstance(value, list) and args:
        return [check_numbers(args[0], v) for v in value]
    if origin is tuple and isinstance(value, (list, tuple)) and args:
        return [check_numbers(args[i], v) if i < len(args) else v for i, v in enumerate(value)]
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        text_keys = _bare(args[0]) is str
        return {str(k) if text_keys and isinstance(k, int) and not isinstance(k, bool) else k: check_numbers(args[1], v)
                for k, v in value.items()}
    return value


def _checks_itself(tp: Any) -> bool:
    """Whether ``tp`` has a before-validator of its own (``2GB`` for a byte count): it judges its input."""
    while get_origin(tp) is Annotated:
        if any(isinstance(m, BeforeValidator) for m in tp.__metadata__):
            return True
        tp = get_args(tp)[0]
    return False


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float))


def _bare(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


class FieldProblems(ValueError):
    """Raised by cross-field validators: problems at paths relative to the model being validated.

    The loader turns each into its own located error line; ``str()`` reads well without it.
    """

    def __init__(self, problems: list[tuple[tuple[str | int, ...], str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(map(str, path))}: {msg}" if path else msg for path, msg in problems))


def check_regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:  # huge repeat counts, deep nesting
        raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None
    return pattern


Regex = Annotated[str, AfterValidator(check_regex)]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(value: Any) -> Any:
    """Turn ``"2GB"``, ``"500MiB"`` or ``1000000`` into a number of bytes.

    A number is checked as any whole-number field's (``1e12`` is 10**12; ``true`` is refused); anything
    else it cannot read is returned unchanged, for the int validator to reject.
    """
    if isinstance(value, str):
        match = _SIZE.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a size; write e.g. 2GB, 500MB, 512MiB or a byte count")
        number, unit = match.groups()
        try:
            return int(float(number) * _UNITS[(unit or "").upper()])
        except OverflowError:
            raise ValueError(f"{value!r} is too large to be a size") from None
    return check_numbers(int, value)


ByteSize = Annotated[
    int,
    BeforeValidator(parse_size),
    Field(ge=1, le=10**12),  # 1 TB: no single file of a vision model is larger
    WithJsonSchema({
        "anyOf": [
            {"type": "integer", "minimum": 1, "maximum": 10**12},
            {"type": "string", "pattern": pattern(r"^\s*\d+(\.\d+)?\s*([KMGTkmgt][iI]?[bB]|[bB])?\s*$",
                                                  "must be a size such as 2GB, 500MB or 512MiB, or a byte count")},
        ],
    }),
]
