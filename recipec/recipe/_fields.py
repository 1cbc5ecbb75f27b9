"""Building blocks shared by the recipe sections: the strict base model, located cross-field
problems, regex fields that must compile, and byte sizes written as ``2GB`` or ``500MiB``.

This module never imports torch.
"""

from __future__ import annotations

import re
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

__all__ = ["MAX_BATCH", "MAX_CLASSES", "MAX_EPOCHS", "MAX_INPUT_BYTES", "MAX_LR", "SCHEMA_ID", "ByteSize",
           "FieldProblems", "Regex", "parse_size"]

SCHEMA_ID = "https://recipec.dev/schemas/recipe.schema.json"

# Bounds of numbers: beyond them a value is a typo, or something no machine can hold (each Field says why).
MAX_EPOCHS = 10_000  # the longest schedules in use (MAE: 1600); the plan holds one row per epoch
MAX_BATCH = 65_536  # the largest batches in the literature (LARS/LAMB at 64k); `features --batch-size` too
MAX_CLASSES = 1_000_000  # face-identity label sets are about this; a head beyond holds billions of weights
MAX_LR = 100.0  # large-batch SGD uses up to ~30
MAX_INPUT_BYTES = 2**36  # one float32 input batch (batch_size x in_channels x image_size**2 x 4) above 64 GiB

_NUMBER_TEXT = re.compile(r"[-+]?([0-9][0-9_]*)?\.?[0-9_]*([eE][-+]?[0-9]+)?")


class BaseSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _numbers(cls, data: Any) -> Any:
        """Booleans are not numbers; a whole-number field takes a whole float (``1e3``, ``2.0``).

        Pydantic's lax mode reads ``true`` (YAML: on, yes) as 1, so ``epochs: on`` would be one
        epoch. A boolean in a number field is replaced by a marker that pydantic refuses like any
        other non-number, so it is reported with every other problem. Text that reads as a number
        still is one (YAML 1.1 reads ``3e-4`` and ``1e3`` as text); ``1e3`` in a whole-number field
        is 1000, ``2.5`` there is refused.
        """
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, field in cls.model_fields.items():
            if name in out:
                out[name] = check_numbers(field.annotation, out[name])
        return out


class _NotANumber:
    """A boolean found where a number belongs; pydantic refuses it as it refuses any object."""

    def __init__(self, value: bool) -> None:
        self.value = value

    def __str__(self) -> str:
        return f"{str(self.value).lower()} (YAML reads on/off/yes/no as booleans)"

    __repr__ = __str__


def check_numbers(tp: Any, value: Any) -> Any:
    """``value`` with whole floats made ints where ``tp`` wants an int, and booleans where it wants a number marked."""
    tp = _bare(tp)
    if get_origin(tp) in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        if len(members) != 1:  # Literal | float unions and model unions check their own members
            return value
        tp = _bare(members[0])
    origin, args = get_origin(tp), get_args(tp)
    if tp in (int, float):
        if isinstance(value, bool):
            return _NotANumber(value)
        # only "1e3" and "2.0" need float(); plain digits stay exact for pydantic
        if (tp is int and isinstance(value, str) and _NUMBER_TEXT.fullmatch(value.strip())
                and any(c.isdigit() for c in value) and any(c in value for c in ".eE")):
            try:
                number = float(value.replace("_", ""))
            except ValueError:
                return value
            return int(number) if number.is_integer() else value
        if tp is int and isinstance(value, float) and value.is_integer():
            return int(value)
        return value
    if origin is list and isinstance(value, list) and args:
        return [check_numbers(args[0], v) for v in value]
    if origin is tuple and isinstance(value, (list, tuple)) and args:
        return [check_numbers(args[i], v) if i < len(args) else v for i, v in enumerate(value)]
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return {k: check_numbers(args[1], v) for k, v in value.items()}
    return value


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

    Anything it cannot read is returned unchanged, for the int validator to reject.
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
    return value


ByteSize = Annotated[
    int,
    BeforeValidator(parse_size),
    Field(ge=1, le=10**12),  # 1 TB: no single file of a vision model is larger
    WithJsonSchema({
        "anyOf": [
            {"type": "integer", "minimum": 1, "maximum": 10**12},
            {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*([KMGTkmgt][iI]?[bB]|[bB])?\s*$"},
        ],
    }),
]
