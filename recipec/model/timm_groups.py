"""The structure of a timm model through timm's own interfaces: its classifier(s) and its layer groups.

Heads are found and replaced with ``get_classifier``/``reset_classifier`` (timm's pooling and
pre-logits norm stay); groups come from the model's ``group_matcher`` numbered as
``timm.models.group_parameters`` numbers them, so ``lr_decay`` equals timm's layer decay.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import nn

from recipec.errors import ModelError
from recipec.model.heads import HeadInfo, build_head, describe_module, placement, set_module
from recipec.model.presets import module_regexes, outermost_modules

__all__ = ["replace_timm_head", "timm_groups", "timm_head_paths"]


def timm_head_paths(model: nn.Module) -> list[str]:
    """Dotted paths of the classifier layer(s) (``head``, ``head.fc``; distilled models: two)."""
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier")
    names = [classifier] if isinstance(classifier, str) else list(classifier or [])
    modules = dict(model.named_modules())
    found = [n for n in names if isinstance(modules.get(n), (nn.Linear, nn.Conv2d))]
    if found:
        return found
    heads = model.get_classifier()  # type: ignore[operator]
    heads = heads if isinstance(heads, tuple) else (heads,)
    by_id = {id(m): n for n, m in modules.items() if n}
    return [by_id[id(h)] for h in heads if id(h) in by_id]


def replace_timm_head(model: nn.Module, arch: str, *, num_classes: int, type: str = "linear",
                      hidden: list[int] | None = None, dropout: float = 0.0, activation: str | None = None) -> HeadInfo:
    """Replace the classifier through timm's interface: ``reset_classifier`` keeps timm's global
    pooling (and pre-logits norm), then recipec's head takes the classifier layer's place.

    A distilled model (DeiT, LeViT) has a second classifier, ``head_dist``, averaged with the
    first at inference: it gets the same new head (reported as the second prefix).

    Returns:
        What was replaced, by what, and the new head's state-dict prefix.
    """
    if not hasattr(model, "reset_classifier"):
        raise ModelError((("model", "head"), f"{arch} has no reset_classifier(); set model.head.at to its classifier"))
    old_paths = timm_head_paths(model)
    old = {p: describe_module(model.get_submodule(p)) for p in old_paths}
    model.reset_classifier(num_classes)  # type: ignore[operator]
    paths = timm_head_paths(model)
    if not paths:
        raise ModelError((("model", "head"), f"{arch}: timm names no classifier layer; set model.head.at"))
    new_modules = []
    widths = []
    for path in paths:
        layer = model.get_submodule(path)
        conv = isinstance(layer, nn.Conv2d)
        width = int(layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features)  # type: ignore[arg-type]
        head = build_head(width, num_classes=num_classes, type=type, hidden=hidden,  # type: ignore[arg-type]
                          dropout=dropout, activation=activation, conv=conv, **placement(layer))  # type: ignore[arg-type]
        set_module(model, path, head)
        new_modules.append(head)
        widths.append(width)
    notes = tuple(f"distillation head {p}: {old.get(p, '?')}  ->  {describe_module(m)} (averaged with {paths[0]}'s logits)"
                  for p, m in zip(paths[1:], new_modules[1:]))
    main = new_modules[0]
    return HeadInfo(path=paths[0], in_features=widths[0], old=old.get(paths[0], old_paths[0] if old_paths else "?"),
                    new=describe_module(main), param_prefix=f"{paths[0]}.",
                    num_params=sum(p.numel() for m in new_modules for p in m.parameters()), notes=notes,
                    aux_prefixes=tuple(f"{p}." for p in paths[1:]))


def timm_groups(model: nn.Module, head_prefixes: list[str], *, fine: bool = False) -> list[tuple[str, list[str]]]:
    """Layer groups from the model's ``group_matcher``, as timm's layer decay numbers them.

    ``timm.models.group_parameters`` orders the parameters into layers (coarse: stages, fine:
    blocks); what no pattern matches (the classifier, its norm, ``head_dist``) is the last
    layer, here ``head``, together with the new head. The first group is ``stem``; the others
    are named after what the pattern matched (``layer1``, ``stages.2``, ``blocks.11``).

    Returns:
        (name, regexes) pairs, earliest first, head last.
    """
    from timm.models._manipulate import group_with_matcher  # noqa: PLC0415  (optional extra)

    if not hasattr(model, "group_matcher"):
        return []
    matcher = model.group_matcher(coarse=not fine)  # type: ignore[operator]
    params = [n for n, _ in model.named_parameters()]
    layer_of = group_with_matcher(((n, None) for n in params), matcher, reverse=True)
    last = max(layer_of.values(), default=-1) + 1
    in_head = [n for n in params if any(n.startswith(p) for p in head_prefixes)]
    for n in params:
        if n in in_head or n not in layer_of or _unmatched(n, matcher):
            layer_of[n] = last
    layers = sorted(set(layer_of.values()))
    groups: list[tuple[str, list[str]]] = []
    param_set, used = set(params), {"stem", "head"}
    for i, layer in enumerate(layers):
        members = [n for n in params if layer_of[n] == layer]
        if layer == last:
            name = "head"
        elif i == 0:
            name = "stem"
        else:
            name = _group_name(members[0], matcher, used)
        groups.append((name, module_regexes(outermost_modules(members, params), param_set)))
    return groups


def _patterns(matcher: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for spec in matcher.values():
        if isinstance(spec, (list, tuple)):
            out += [s[0] for s in spec]
        elif spec is not None:
            out.append(spec)
    return out


def _unmatched(name: str, matcher: Any) -> bool:
    return isinstance(matcher, Mapping) and not any(re.match(p, name) for p in _patterns(matcher))


def _group_name(param: str, matcher: Any, used: set[str]) -> str:
    hits = [m.group(0) for p in _patterns(matcher) if (m := re.match(p, param))] if isinstance(matcher, Mapping) else []
    base = hits[0].rstrip(".") if hits and hits[0].strip(".") else param.rpartition(".")[0] or param
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", base).lstrip(".-") or "group"
    name, k = base, 2
    while name in used:
        name, k = f"{base}_{k}", k + 1
    used.add(name)
    return name
