"""Building blocks shared by the recipe sections: the strict base model, located cross-field
problems, regex fields that must compile, and byte sizes written as ``2GB`` or ``500MiB``.

This module never imports torch.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

__all__ = ["SCHEMA_ID", "ByteSize", "FieldProblems", "Regex", "parse_size"]

SCHEMA_ID = "https://recipec.dev/schemas/recipe.schema.json"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class FieldProblems(ValueError):
    """Raised by cross-field validators: problems at paths relative to the model being validated.

    The loader turns each into its own located error line; ``str()`` reads well without it.
    """

    def __init__(self, problems: list[tuple[tuple[str | int, ...], str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(map(str, path))}: {msg}" if path else msg for path, msg in problems))


def _check_regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:  # huge repeat counts, deep nesting
        raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None
    return pattern


Regex = Annotated[str, AfterValidator(_check_regex)]

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
    Field(ge=1),
    WithJsonSchema({
        "anyOf": [
            {"type": "integer", "minimum": 1},
            {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*([KMGTkmgt][iI]?[bB]|[bB])?\s*$"},
        ],
    }),
]
