"""The rules of a transfer, compiled: a preset's beside the recipe's, shape rules apart from fuse/split.

A preset's rules (:data:`recipec.recipe.presets.PRESETS`) run before the recipe's: its renames
first, its excludes beside the recipe's, its fuse/split rules first, its shape rules last (the
first shape rule that matches wins, so the recipe's win). Its rules may match nothing; the
recipe's keep the indices the recipe gives them, so their problems point at the recipe's lines.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from recipec.errors import Problem, RecipePath, TransferError
from recipec.recipe.presets import Preset
from recipec.weights._keys import KeyMapping, map_keys
from recipec.weights.adapt import RULES
from recipec.weights.fuse import JoinRule, parse_join_rule

__all__ = ["ShapeRule", "adapt_rules", "map_with_preset"]

_ADAPT_FIELDS = ("match", "rule", "indices", "fuse", "split", "into", "dim", "sizes")


class ShapeRule(NamedTuple):
    """A shape rule of source.adapt, compiled; ``where`` locates its problems."""

    pattern: re.Pattern[str]
    rule: str
    indices: Any
    where: RecipePath
    optional: bool  # a preset's: may match nothing


def adapt_rules(adapt: Sequence[Any], preset: Preset,
                problems: list[Problem]) -> tuple[list[ShapeRule], list[JoinRule]]:
    """The shape rules (the recipe's, then the preset's) and the fuse/split rules (the preset's, then the recipe's)."""
    shape_rules: list[ShapeRule] = []
    joins: dict[bool, list[JoinRule]] = {True: [], False: []}
    items: list[tuple[Any, RecipePath, bool]] = [(item, ("adapt", i), False) for i, item in enumerate(adapt)]
    items += [(item, ("preset",), True) for item in preset.adapt]
    for item, where, optional in items:
        fields: Mapping[str, Any] = (item if isinstance(item, Mapping)
                                     else {name: getattr(item, name, None) for name in _ADAPT_FIELDS})
        if fields.get("fuse") is not None or fields.get("split") is not None:
            join = parse_join_rule(fields, where, problems, optional=optional)
            if join is not None:
                joins[optional].append(join)
            continue
        match: Any = fields.get("match")
        rule, indices = fields.get("rule"), fields.get("indices")
        if rule not in RULES:
            problems.append((where, f"unknown rule {rule!r}; choose one of: {', '.join(RULES)}"))
        try:
            shape_rules.append(ShapeRule(re.compile(match), str(rule), indices, where, optional))
        except (re.error, TypeError) as exc:
            problems.append((where, f"match {match!r} is not a valid regular expression: {exc}"))
    shape_rules.sort(key=lambda r: r.optional)  # the recipe's first: the first match wins
    return shape_rules, joins[True] + joins[False]


def _without_preset(problems: Sequence[Problem], preset: Preset) -> list[Problem]:
    """Problems of the combined rule lists, the preset's own dropped (they may match nothing), the recipe's
    re-indexed as the recipe writes them (``("rename", 14)`` -> ``("rename", 0)``)."""
    offsets = {"rename": len(preset.rename), "exclude": len(preset.exclude)}
    out: list[Problem] = []
    for problem in problems:
        if isinstance(problem, tuple) and len(problem[0]) == 2 and problem[0][0] in offsets:
            field, index = problem[0]
            assert isinstance(field, str) and isinstance(index, int)
            if index < offsets[field]:
                continue
            problem = ((field, index - offsets[field]), problem[1])
        out.append(problem)
    return out


def map_with_preset(keys: Sequence[str], rename: Sequence[Sequence[str]], include: Sequence[str],
                    exclude: Sequence[str], preset: Preset, name: str = "") -> KeyMapping:
    """:func:`map_keys` with the preset's renames before the recipe's and its excludes beside them."""
    try:
        mapping = map_keys(keys, rename=[*preset.rename, *rename], include=include,
                           exclude=[*preset.exclude, *exclude])
    except TransferError as exc:
        raise TransferError(_without_preset([m if p is None else (p, m) for p, m in zip(exc.paths, exc.messages)],
                                            preset)) from exc
    problems = _without_preset(mapping.problems, preset)
    dead = {i for field, i, _ in mapping.unmatched if field == "rename"}
    if preset.rename and dead >= set(range(len(preset.rename))):
        shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
        problems.insert(0, (("preset",), f"{name} renames none of the source keys: it reads {preset.source}, "
                                         f"but source keys look like: {shown or '(no keys at all)'}"))
    return KeyMapping(mapping.renamed, mapping.excluded, mapping.kept, mapping.collisions, mapping.unmatched, problems)
