"""Sweep spaces (``recipec sweep --space SPACE.yaml``): recipe paths -> distributions, located errors.

```yaml
optimizer.lr: {loguniform: [1.0e-5, 1.0e-2]}
optimizer.lr_decay: {uniform: [1.0, 4.0]}
train.epochs: {int: [2, 6]}
freeze.unfreeze: {choice: [{}, {2: [layer4]}, {2: [layer4], 4: [layer3]}]}
```

Each key is a dotted path as ``--set`` takes it; it is checked against the recipe schema (a key
the schema does not have is an error before any trial). A value the schema refuses is not: it
makes that trial fail, with the reason, when its recipe is validated. A sampled value reaches
the recipe as ``--set PATH=VALUE`` (the value as YAML), so it is located like any override.

This module never imports torch.
"""

from __future__ import annotations

import difflib
import math
import os
import types
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from recipec.errors import RecipeError
from recipec.recipe._yaml import read_recipe_file
from recipec.recipe.spec import Recipe

__all__ = ["KINDS", "Dimension", "load_space", "override"]

KINDS = ("uniform", "loguniform", "int", "choice")
MAX_CHOICES = 1_000


@dataclass(frozen=True)
class Dimension:
    """One searched recipe value: ``path`` (dotted, as ``--set`` takes it), its distribution ``kind``
    (one of :data:`KINDS`) and ``args`` (``[low, high]``, or the choices)."""

    path: str
    kind: str
    args: tuple[Any, ...]

    def choice_labels(self) -> list[Any]:
        """The choices as Optuna stores them: scalars as they are, mappings and lists as flow YAML text."""
        return [value if _scalar(value) else _flow(value) for value in self.args]

    def value_of(self, sampled: Any) -> Any:
        """The recipe value of a sampled parameter (a choice label back to its value)."""
        if self.kind != "choice":
            return sampled
        labels = self.choice_labels()
        return self.args[labels.index(sampled)] if sampled in labels else sampled


def override(path: str, value: Any) -> str:
    """``--set`` text that puts ``value`` at ``path``: ``optimizer.lr=0.001``."""
    return f"{path}={_flow(value)}"


def load_space(path: str | os.PathLike[str]) -> list[Dimension]:
    """Read and check a sweep space file.

    Returns:
        The dimensions, in the file's order.

    Raises:
        RecipeError: every problem at once, each ``file:line:col: key: message`` (an unknown recipe
            path, an unknown distribution, bounds that are not numbers or not in order, ...).

    Example:
        >>> [d.path for d in load_space("space.yaml")]
        ['optimizer.lr', 'data.mixup.alpha']
    """
    try:
        data, sources = read_recipe_file(os.fspath(path))
    except RecipeError as exc:  # the reader's words are a recipe's
        raise RecipeError([p.replace("a recipe must be a mapping at top level (name: ..., model: ...)",
                                     "a space must be a mapping at top level (optimizer.lr: {loguniform: [...]}, ...)")
                           for p in exc.problems]) from None
    problems: list[str] = []
    dims: list[Dimension] = []
    for key, spec in data.items():
        where = sources.locate((key,), key=True) or os.fspath(path)
        found = _path_problem(str(key)) or _overlap(str(key), [d.path for d in dims])
        dim, problem = _dimension(str(key), spec)
        for text in (found, problem):
            if text:
                problems.append(f"{where}: {key}: {text}")
        if dim is not None and not found:
            dims.append(dim)
    if not data:
        problems.append(f"{path}: the space is empty; map recipe paths to distributions, e.g. "
                        "optimizer.lr: {loguniform: [1.0e-5, 1.0e-2]}")
    if problems:
        raise RecipeError(problems)
    return dims


def _dimension(key: str, spec: Any) -> tuple[Dimension | None, str | None]:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        named = next(iter(spec)) if isinstance(spec, dict) and len(spec) == 1 else None
        close = difflib.get_close_matches(str(named), KINDS, n=1) if named is not None else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return None, (f"must be one distribution: {{uniform: [low, high]}}, {{loguniform: [low, high]}}, "
                      f"{{int: [low, high]}} or {{choice: [value, ...]}}{hint}")
    kind, args = next(iter(spec.items()))
    if not isinstance(args, list):
        return None, f"{kind}: must be a list ({'[value, ...]' if kind == 'choice' else '[low, high]'})"
    if kind == "choice":
        if not args or len(args) > MAX_CHOICES:
            return None, f"choice: must list 1 to {MAX_CHOICES:,} values"
        labels = [v if _scalar(v) else _flow(v) for v in args]
        if len({repr(v) for v in labels}) != len(labels):
            return None, "choice: the values must differ"
        return Dimension(key, kind, tuple(args)), None
    number = int if kind == "int" else (int, float)
    if len(args) != 2 or any(isinstance(v, bool) or not isinstance(v, number) for v in args) \
            or not all(math.isfinite(v) for v in args):
        what = "whole numbers" if kind == "int" else "numbers"
        return None, f"{kind}: must be [low, high], two {what}, got {_flow(args)}"
    low, high = args
    if not low < high:
        return None, f"{kind}: low must be below high, got [{low}, {high}]"
    if kind == "loguniform" and low <= 0:
        return None, f"loguniform: low must be > 0 (it is sampled on a log scale), got {low}"
    return Dimension(key, kind, (low, high)), None


def _overlap(key: str, earlier: list[str]) -> str | None:
    for other in earlier:
        if key.startswith(other + ".") or other.startswith(key + "."):
            return f"overlaps {other!r}: search a value, or a path inside it, not both"
    return None


def _path_problem(key: str) -> str | None:
    """Why ``key`` is not a path of the recipe schema (None when it is)."""
    parts = key.split(".")
    if "" in parts:
        return "has an empty part; write dotted keys such as optimizer.lr or freeze.unfreeze.3"
    if parts[0] == "extends":
        return "extends cannot be searched"
    candidates: list[Any] = [Recipe]
    for i, part in enumerate(parts):
        nxt: list[Any] = []
        names: list[str] = []
        for tp in candidates:
            for inner in _members(tp):
                if inner is Any:
                    return None  # free-form (model.kwargs): any key below
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    fields = {f.alias or n: f.annotation for n, f in inner.model_fields.items()}
                    names += list(fields)
                    if part in fields:
                        nxt.append(fields[part])
                elif get_origin(inner) is dict:
                    nxt.append(get_args(inner)[1] if get_args(inner) else Any)
                elif get_origin(inner) in (list, tuple) and part.isdigit():
                    args = get_args(inner)
                    nxt.append(args[0] if args else Any)
        if not nxt:
            at = ".".join(parts[:i]) or "the recipe"
            close = difflib.get_close_matches(part, sorted(set(names)), n=1)
            hint = f"; did you mean {'.'.join([*parts[:i], close[0]])!r}?" if close else ""
            return f"not a recipe path: {at} has no key {part!r}{hint}"
        candidates = nxt
    return None


def _members(tp: Any) -> list[Any]:
    """The types a value of annotation ``tp`` may have (Annotated and Optional unwrapped)."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) in (Union, types.UnionType):
        return [m for arg in get_args(tp) for m in _members(arg) if m is not type(None)]
    return [tp]


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _flow(value: Any) -> str:
    """``value`` as one line of YAML (flow style) that reads back as ``value``."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False).strip()
    return text.removesuffix("\n...").strip()
