r"""Fuse and split: several source tensors into one model tensor, and one into several.

Hugging Face ViT, DINOv2 and CLIP keep the attention's q, k and v apart where timm fuses them
(``attn.qkv.weight = cat([q, k, v], dim=0)``) and torchvision too (``in_proj_weight``). A rule
of ``source.adapt`` says which tensors, in which order, along which dimension:

    {fuse: ['(.*)\.q\.(weight|bias)', '\1.k.\2', '\1.v.\2'], into: '\1.qkv.\2', dim: 0}
    {split: '(.*)\.qkv\.(weight|bias)', into: ['\1.q.\2', '\1.k.\2', '\1.v.\2'], dim: 0}

The first part of a fuse (the pattern of a split) must match a whole renamed key
(``re.fullmatch``); the other parts and ``into`` are expansions of that match (``\1``,
``\g<name>``), so one rule covers every layer, and the parts are concatenated in the order
written. A split cuts equal parts unless ``sizes`` says otherwise. Both run on the renamed keys
that include/exclude kept, before shapes are compared with the model's; a rule's parts are
consumed (a later rule does not see them).

:func:`plan_joins` works on names only and finds every problem at once; :func:`join_tensor`
builds one planned tensor (:func:`fuse_tensors`, :func:`split_tensor`: pure tensor functions).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from recipec.errors import Problem, RecipePath, TransferError

__all__ = ["JOIN_KINDS", "JoinRule", "Joined", "fuse_tensors", "join_tensor", "parse_join_rule", "plan_joins",
           "split_tensor"]

JOIN_KINDS = ("fuse", "split")
_SAMPLE = 3


def _shape(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


@dataclass(frozen=True)
class JoinRule:
    """A fuse or split rule, compiled; ``where`` locates its problems, ``optional`` rules may match nothing."""

    kind: str  # "fuse" or "split"
    pattern: re.Pattern[str]
    parts: tuple[str, ...]  # fuse: templates of the parts after the first; split: templates of the parts
    into: str  # fuse: template of the fused name; split: ""
    dim: int
    sizes: tuple[int, ...] | None
    where: RecipePath
    optional: bool = False


@dataclass(frozen=True)
class Joined:
    """A tensor to be built from renamed source tensors: all of ``parts`` fused, or part ``index`` of a split."""

    name: str
    rule: JoinRule
    parts: tuple[str, ...]  # the renamed source names it reads (fuse: in order; split: the one)
    index: int = 0
    count: int = 1


def parse_join_rule(fields: Mapping[str, Any], where: RecipePath, problems: list[Problem],
                    optional: bool = False) -> JoinRule | None:
    """The :class:`JoinRule` of a ``source.adapt`` item with ``fuse`` or ``split``; problems appended, None on any."""
    kind = "fuse" if fields.get("fuse") is not None else "split"
    first: Any = fields.get(kind)
    into: Any = fields.get("into")
    dim: Any = fields.get("dim", 0)
    sizes: Any = fields.get("sizes")
    dim = 0 if dim is None else dim
    found: list[Problem] = []
    if kind == "fuse":
        if not isinstance(first, (list, tuple)) or len(first) < 2 or not all(isinstance(p, str) for p in first):
            found.append((where, f"fuse needs two or more parts: a regex, then templates, got {first!r}"))
        if not isinstance(into, str):
            found.append((where, f"a fuse needs into: the template of the fused key, got {into!r}"))
        if sizes is not None:
            found.append((where, "sizes only applies to split"))
    elif not isinstance(into, (list, tuple)) or len(into) < 2 or not all(isinstance(p, str) for p in into):
        found.append((where, f"a split needs into: two or more templates of the parts' keys, got {into!r}"))
    elif sizes is not None and (not isinstance(sizes, (list, tuple)) or len(sizes) != len(into)
                                or not all(isinstance(s, int) and s >= 1 for s in sizes)):
        found.append((where, f"sizes needs one positive size per part of into ({len(into)}), got {sizes!r}"))
    if not isinstance(dim, int) or isinstance(dim, bool):
        found.append((where, f"dim must be an integer, got {dim!r}"))
    if found:
        problems += found
        return None
    pattern_text: str = first[0] if kind == "fuse" else first
    try:
        pattern = re.compile(pattern_text)
    except (re.error, TypeError) as exc:
        problems.append((where, f"{kind} pattern {pattern_text!r} is not a valid regular expression: {exc}"))
        return None
    parts = tuple(first[1:]) if kind == "fuse" else tuple(into)
    templates = (*parts, into) if kind == "fuse" else parts
    for template in templates:
        try:
            pattern.sub(template, "")  # parses the template (group references) even without a match
        except (re.error, IndexError, TypeError) as exc:
            problems.append((where, f"template {template!r} is not valid for '{pattern.pattern}': {exc}"))
            return None
    return JoinRule(kind, pattern, parts, into if kind == "fuse" else "", dim,
                    tuple(sizes) if sizes is not None else None, where, optional)


def plan_joins(names: Sequence[str], rules: Sequence[JoinRule]) -> tuple[list[Joined], list[Problem]]:
    """Which renamed names each rule reads and which names it makes; no tensors involved.

    Args:
        names: the renamed source keys that include/exclude kept.
        rules: fuse and split rules, in the order they run.

    Returns:
        The planned tensors, and every problem: a rule (not optional) that matches no key, a part a
        fuse needs that is not there (or that an earlier rule took), a made name that another
        rule or a kept key already has.
    """
    available = dict.fromkeys(sorted(names))
    planned: list[Joined] = []
    problems: list[Problem] = []
    made: dict[str, RecipePath] = {}
    for rule in rules:
        hits = [(name, m) for name in list(available) if (m := rule.pattern.fullmatch(name))]
        if not hits and not rule.optional:
            shown = ", ".join(list(available)[:_SAMPLE]) + (", ..." if len(available) > _SAMPLE else "")
            problems.append((rule.where, f"{rule.kind} pattern '{rule.pattern.pattern}' matched no renamed key "
                                         f"(it must match the whole key); renamed keys look like: {shown or '(none)'}"))
        for name, m in hits:
            if name not in available:  # taken as a later part of a fuse of this rule
                continue
            if rule.kind == "fuse":
                parts = (name, *(m.expand(t) for t in rule.parts))
                lacking = [p for p in parts[1:] if p not in available]
                if lacking:
                    problems.append((rule.where, f"fuse into '{m.expand(rule.into)}': "
                                                 + ", ".join(f"part '{p}'" for p in lacking)
                                                 + f" (with '{name}') is not among the renamed source keys; "
                                                 "rename a source key onto it (source.rename) or fix the template"))
                    continue
                if len(set(parts)) != len(parts):
                    problems.append((rule.where, f"fuse of '{name}' names one key twice: {', '.join(parts)}"))
                    continue
                outputs = [Joined(m.expand(rule.into), rule, parts)]
            else:
                parts = (name,)
                outputs = [Joined(m.expand(t), rule, parts, i, len(rule.parts)) for i, t in enumerate(rule.parts)]
            for part in parts:
                del available[part]
            planned += outputs
            for out in outputs:
                if out.name in made:
                    problems.append((rule.where, f"'{out.name}' is made twice (also by the rule at "
                                                 f"{'.'.join(map(str, made[out.name]))}); make each key once"))
                made[out.name] = rule.where
    for name, where in made.items():
        if name in available:
            problems.append((where, f"'{name}' is made by this rule but is a renamed source key too; "
                                    "exclude one of them (source.exclude)"))
    return planned, problems


def fuse_tensors(parts: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
    """``torch.cat(parts, dim)``, after checking that the parts agree on every other dimension.

    timm's ``attn.qkv.weight`` of ``(3 * dim, dim)`` is ``cat([q, k, v], 0)`` of three ``(dim, dim)``.

    Raises:
        TransferError: ranks or other dimensions differ, or ``dim`` is out of range.
    """
    shapes = [tuple(p.shape) for p in parts]
    shown = " + ".join(_shape(s) for s in shapes)
    rank = len(shapes[0])
    if any(len(s) != rank for s in shapes) or not -rank <= dim < rank:
        raise TransferError(f"fuse along dim {dim} needs parts of one rank with that dim, got {shown}")
    d = dim % rank
    if any(s[:d] + s[d + 1:] != shapes[0][:d] + shapes[0][d + 1:] for s in shapes):
        raise TransferError(f"fuse along dim {dim}: the parts must agree on every other dim, got {shown}")
    return torch.cat(list(parts), dim=d)


def split_tensor(source: torch.Tensor, count: int, dim: int, sizes: Sequence[int] | None = None) -> list[torch.Tensor]:
    """``count`` parts of ``source`` along ``dim``: equal, or of ``sizes``; the reverse of :func:`fuse_tensors`.

    Raises:
        TransferError: ``dim`` out of range, or a length that equal parts or ``sizes`` do not add up to.
    """
    rank = source.dim()
    if not -rank <= dim < rank:
        raise TransferError(f"split along dim {dim}, but the source {_shape(source.shape)} has {rank} dims")
    length = source.shape[dim]
    if sizes is None:
        if length % count:
            raise TransferError(f"split into {count} equal parts along dim {dim}, but the source "
                                f"{_shape(source.shape)} has {length} there; give sizes")
        sizes = [length // count] * count
    elif sum(sizes) != length:
        raise TransferError(f"split sizes {list(sizes)} add up to {sum(sizes)}, but the source "
                            f"{_shape(source.shape)} has {length} along dim {dim}")
    return list(torch.split(source, list(sizes), dim=dim))


def join_tensor(joined: Joined, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The tensor ``joined`` plans, from renamed source tensors by name.

    Raises:
        TransferError: the shapes do not allow it (the message says which).
    """
    rule = joined.rule
    if rule.kind == "fuse":
        return fuse_tensors([tensors[p] for p in joined.parts], rule.dim)
    return split_tensor(tensors[joined.parts[0]], joined.count, rule.dim, rule.sizes)[joined.index]
