"""Layer groups: named, ordered sets of parameters (earliest first, the head last).

Groups are what freezing schedules and discriminative learning rates talk about. A group is
a list of regexes searched in parameter names; :func:`assign_groups` checks that they
partition the model's parameters exactly. Each model family writes its default groups
(:func:`recipec.model.families.preset_groups`) from the module names the model actually has.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from recipec.errors import GroupError, Problem

__all__ = ["LayerGroup", "assign_groups", "param_to_group"]

_SHOWN = 20  # names listed in one message before "(+N more)"


@dataclass(frozen=True)
class LayerGroup:
    """A named group of parameters.

    Attributes:
        name: group name, used by freezing schedules and per-group learning rates.
        params: parameter names (as in ``named_parameters``), in model order.
        numel: number of scalar parameters in the group.
    """

    name: str
    params: tuple[str, ...]
    numel: int


def param_to_group(groups: Sequence[LayerGroup]) -> dict[str, str]:
    """Map every parameter name to the name of its group."""
    return {param: group.name for group in groups for param in group.params}


def assign_groups(
    model: nn.Module,
    groups: Sequence[tuple[str, Sequence[str]]],
    *,
    head_prefix: str | None = None,
    from_recipe: bool = False,
) -> list[LayerGroup]:
    """Assign every parameter of ``model`` to exactly one group.

    A regex is searched (``re.search``) in each parameter name, frozen parameters included.
    There is no precedence between groups: a parameter matched by two groups is an error, as is
    a parameter matched by none, a group or regex that matches nothing (a typo must not pass
    silently), and a head parameter outside the last group.

    Args:
        model: the model, with its new head in place.
        groups: (name, regexes) pairs, earliest first.
        head_prefix: state-dict prefix of the head (``"fc."``); its parameters must all be in the
            last group, since learning rates and gradual unfreezing count from the last group.
        from_recipe: the groups come from the recipe's ``groups:``; problems then carry recipe
            paths (``groups.2.match``) so the command line can point at them.

    Returns:
        One :class:`LayerGroup` per group, in the given order.

    Raises:
        GroupError: every problem found, one per line.
    """
    def at(path: tuple[str | int, ...], message: str) -> Problem:
        return (path, message) if from_recipe else message

    named = list(model.named_parameters())
    names = [name for name, _ in named]
    problems: list[Problem] = []
    if not groups:
        raise GroupError(at(("groups",), "no layer groups; write at least one, e.g. {name: body, match: ['.']}"))
    seen: set[str] = set()
    for i, (name, _) in enumerate(groups):
        if name in seen:
            problems.append(at(("groups", i, "name"), f"group {name!r} is named twice"))
        seen.add(name)

    members: dict[str, list[int]] = {name: [] for name in names}  # param -> indices of the groups matching it
    for i, (group, regexes) in enumerate(groups):
        matched_any = False
        for j, regex in enumerate(regexes):
            try:
                pattern = re.compile(regex)
            except re.error as exc:
                problems.append(at(("groups", i, "match", j), f"{regex!r} is not a valid regular expression: {exc}"))
                continue
            hits = [name for name in names if pattern.search(name)]
            if hits:
                matched_any = True
                for name in hits:
                    if not members[name] or members[name][-1] != i:
                        members[name].append(i)
            elif len(regexes) > 1:
                problems.append(at(("groups", i, "match", j),
                                   f"regex {regex!r} of group {group!r} matches no parameter; fix or remove it"))
        if not matched_any:
            problems.append(at(("groups", i, "match"), f"group {group!r} matches no parameter "
                                                       f"(parameters are named e.g. {_listing(names[:3])})"))

    unassigned = [name for name in names if not members[name]]
    if unassigned:
        problems.append(at(("groups",), f"{len(unassigned)} parameter(s) in no group: {_listing(unassigned)}; "
                                        "add a group or widen a regex so that every parameter is in exactly one group"))
    overlaps: dict[tuple[int, ...], list[str]] = {}
    for name in names:
        if len(members[name]) > 1:
            overlaps.setdefault(tuple(members[name]), []).append(name)
    for indices, params in overlaps.items():
        which = " and ".join(repr(groups[i][0]) for i in indices)
        problems.append(at(("groups",), f"{len(params)} parameter(s) matched by groups {which}: {_listing(params)}; "
                                        "a parameter must be in exactly one group (no precedence): narrow the regexes, "
                                        "e.g. with a negative lookahead ^(?!fc\\.)"))
    if head_prefix is not None:
        head = head_prefix if head_prefix.endswith(".") else head_prefix + "."
        in_head = [name for name in names if name.startswith(head)]
        if not in_head:
            problems.append(f"no parameter of the model starts with the head prefix {head!r}")
        for i, (group, _) in enumerate(groups[:-1]):
            stray = [name for name in in_head if i in members[name]]
            if stray:
                problems.append(at(("groups", i, "match"), (
                    f"group {group!r} holds parameters of the new head ({_listing(stray)}); the head must be in the "
                    f"last group ({groups[-1][0]!r}), because lr_decay and gradual unfreezing count from the last "
                    f"group; move ^{re.escape(head)} into the last group")))
    if problems:
        raise GroupError(problems)

    result = []
    for i, (group, _) in enumerate(groups):
        own = [(name, param) for name, param in named if members[name] == [i]]
        result.append(LayerGroup(group, tuple(name for name, _ in own), sum(param.numel() for _, param in own)))
    return result


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" (+{len(names) - _SHOWN} more)" if len(names) > _SHOWN else "")

