"""Layer groups: named, ordered sets of parameters (earliest first, the head last).

Groups are what freezing schedules and discriminative learning rates talk about. A group is
a list of regexes searched in parameter names; :func:`assign_groups` checks that they
partition the model's parameters exactly. :func:`preset_groups` writes those regexes for
every torchvision classification family, from the module names the model actually has.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from recipec.errors import GroupError, Problem

__all__ = ["LayerGroup", "assign_groups", "param_to_group", "preset_groups"]

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


# --------------------------------------------------------------------------- presets

# Each preset group is (name, patterns); a pattern is fullmatched against the model's module
# and parameter names, and the outermost matches become the group's regexes. A group whose
# patterns match nothing (e.g. googlenet without aux classifiers) is left out.
_Preset = list[tuple[str, list[str]]]

_STATIC: dict[str, _Preset] = {
    "resnet": [("stem", ["conv1", "bn1"])] + [(f"layer{i}", [f"layer{i}"]) for i in range(1, 5)],
    "regnet": [("stem", ["stem"])] + [(f"block{i}", [rf"trunk_output\.block{i}"]) for i in range(1, 5)],
    "densenet": [("stem", [r"features\.(conv0|norm0)"])]
    + [(f"denseblock{i}", [rf"features\.(denseblock|transition){i}"]) for i in range(1, 4)]
    + [("denseblock4", [r"features\.denseblock4", r"features\.norm5"])],
    # features.0 is the patch embedding; odd indices are stages, even ones the downsampling before them.
    "swin": [("stem", [r"features\.0"]), ("stage1", [r"features\.1"]), ("stage2", [r"features\.[23]"]),
             ("stage3", [r"features\.[45]"]), ("stage4", [r"features\.[67]", "norm"])],
    "convnext": [("stem", [r"features\.0"]), ("stage1", [r"features\.1"]), ("stage2", [r"features\.[23]"]),
                 ("stage3", [r"features\.[45]"]), ("stage4", [r"features\.[67]", "classifier"])],
    "googlenet": [("stem", [r"conv\d"]), ("inception3", [r"inception3[a-z]"]), ("inception4", [r"inception4[a-z]"]),
                  ("inception5", [r"inception5[a-z]"]), ("aux", [r"aux\d"])],
    "inception": [("stem", [r"Conv2d_\w+"]), ("mixed5", [r"Mixed_5[a-z]"]), ("mixed6", [r"Mixed_6[a-z]"]),
                  ("mixed7", [r"Mixed_7[a-z]"]), ("aux", ["AuxLogits"])],
    "shufflenet": [("stem", ["conv1"]), ("stage2", ["stage2"]), ("stage3", ["stage3"]), ("stage4", ["stage4"]),
                   ("last_conv", ["conv5"])],
    "maxvit": [("stem", ["stem"])] + [(f"stage{i + 1}", [rf"blocks\.{i}"]) for i in range(4)]
    + [("classifier", ["classifier"])],
}

# arch name prefix -> family, first match wins
_FAMILIES = (
    ("resnet", "resnet"), ("resnext", "resnet"), ("wide_resnet", "resnet"), ("vgg", "pooled"), ("alexnet", "pooled"),
    ("squeezenet", "pooled"), ("vit_", "vit"), ("swin", "swin"), ("convnext", "convnext"), ("mobilenet", "mobilenet"),
    ("efficientnet", "mobilenet"), ("mnasnet", "mnasnet"), ("densenet", "densenet"), ("regnet", "regnet"),
    ("googlenet", "googlenet"), ("inception", "inception"), ("shufflenet", "shufflenet"), ("maxvit", "maxvit"),
)


def _children(model: nn.Module, path: str, *, with_params: bool = True) -> list[tuple[str, nn.Module]]:
    """Direct children of the module at `path` (none if there is no such module), by full name."""
    try:
        container = model.get_submodule(path)
    except AttributeError:
        return []
    return [(f"{path}.{name}", child) for name, child in container.named_children()
            if not with_params or next(child.parameters(), None) is not None]


def _split_even(names: list[str], parts: int = 4) -> list[list[str]]:
    count = min(parts, len(names))
    size, extra = divmod(len(names), max(count, 1))
    starts = [i * size + min(i, extra) for i in range(count + 1)]  # earlier chunks take the remainder
    return [names[a:b] for a, b in itertools.pairwise(starts)]


def _blocks(names: list[str]) -> _Preset:
    """~4 even groups named blocks_<first>_<last> after the indices of their modules."""
    preset: _Preset = []
    for chunk in _split_even(names):
        first, last = (re.split(r"[._]", name)[-1] for name in (chunk[0], chunk[-1]))
        preset.append((f"blocks_{first}" if first == last else f"blocks_{first}_{last}", [re.escape(n) for n in chunk]))
    return preset


def _pooled(model: nn.Module) -> _Preset:
    """vgg, alexnet, squeezenet: `features` split after each max pooling, then the classifier."""
    preset: _Preset = []
    block: list[str] = []
    for name, child in _children(model, "features", with_params=False):
        if isinstance(child, nn.MaxPool2d):
            if block:
                preset.append((f"block{len(preset) + 1}", block))
            block = []
        elif next(child.parameters(), None) is not None:
            block.append(re.escape(name))
    if block:
        preset.append((f"block{len(preset) + 1}", block))
    return preset + [("classifier", ["classifier"])]


def _vit(model: nn.Module) -> _Preset:
    layers = [name for name, _ in _children(model, "encoder.layers")]
    blocks = _blocks(layers)
    if blocks:  # the encoder's final norm trains with its last blocks
        blocks[-1][1].append(r"encoder\.ln")
    return [("embeddings", ["conv_proj", "class_token", r"encoder\.pos_embedding"])] + blocks + [("pre_logits", ["heads"])]


def _mobilenet(model: nn.Module) -> _Preset:
    """mobilenet v2/v3, efficientnet v1/v2: features.0 is the stem, the last feature the final conv."""
    names = [name for name, _ in _children(model, "features")]
    if len(names) < 3:
        return []
    return ([("stem", [re.escape(names[0])])] + _blocks(names[1:-1])
            + [("last_conv", [re.escape(names[-1])]), ("classifier", ["classifier"])])


def _mnasnet(model: nn.Module) -> _Preset:
    """mnasnet: plain layers, then stacks (Sequential) of inverted residuals, then the final conv."""
    children = _children(model, "layers")
    stacks = [i for i, (_, child) in enumerate(children) if isinstance(child, nn.Sequential)]
    if not stacks:
        return []
    names = [re.escape(name) for name, _ in children]
    return ([("stem", names[: stacks[0]])] + _blocks([children[i][0] for i in stacks])
            + [("last_conv", names[stacks[-1] + 1:]), ("classifier", ["classifier"])])


_DYNAMIC: dict[str, Callable[[nn.Module], _Preset]] = {
    "pooled": _pooled, "vit": _vit, "mobilenet": _mobilenet, "mnasnet": _mnasnet,
}


def _family(arch: str) -> str | None:
    return next((family for prefix, family in _FAMILIES if arch.startswith(prefix)), None)


def preset_groups(arch: str, model: nn.Module, head_prefix: str) -> list[tuple[str, list[str]]]:
    """The default layer groups of an architecture, as (name, regexes), earliest first, head last.

    The family is found from the arch name's prefix (``resnet50`` -> resnet). Regexes are
    written from the module names the model has, so depth variants (vit_l, mobilenet_v3_small)
    get their own. Parameters under ``head_prefix`` form the last group, ``head``, and are
    taken out of every other group (``classifier.6.`` leaves ``classifier.0`` and ``.3`` to the
    ``classifier`` group of a vgg). An unknown family (e.g. ``package.module:factory``) gets
    two groups: ``body`` (everything but the head) and ``head``.

    Args:
        arch: architecture name as in the recipe's ``model.arch``.
        model: the model, with its new head in place.
        head_prefix: state-dict prefix of the head, e.g. ``"fc."`` or ``"heads.head."``.

    Returns:
        (group name, regexes) pairs, to be checked by :func:`assign_groups`.

    Raises:
        GroupError: no parameter starts with ``head_prefix``.

    Example:
        >>> preset_groups("resnet18", model, "fc.")[0]
        ('stem', ['^conv1\\\\.', '^bn1\\\\.'])
    """
    head = head_prefix if head_prefix.endswith(".") else head_prefix + "."
    params = [name for name, _ in model.named_parameters()]
    if not any(name.startswith(head) for name in params):
        raise GroupError(f"no parameter of the model starts with the head prefix {head!r}; "
                         f"the head's parameters are named e.g. {_listing(params[-2:])}")
    family = _family(arch)
    if family in _STATIC:
        preset = _STATIC[family]
    elif family in _DYNAMIC:
        preset = _DYNAMIC[family](model)
    else:
        return [("body", [f"^(?!{re.escape(head)})"]), ("head", [f"^{re.escape(head)}"])]
    param_set = set(params)
    candidates = [name for name, _ in model.named_modules() if name] + params
    groups: list[tuple[str, list[str]]] = []
    for name, patterns in preset:
        compiled = [re.compile(p) for p in patterns]
        matched = [c for c in candidates if any(p.fullmatch(c) for p in compiled)]
        outermost = [c for c in matched if not any(c.startswith(m + ".") for m in matched)]
        names = [n for c in outermost for n in _outside_head(model, c, head, params)]
        if names:
            groups.append((name, _regexes(sorted(names, key=lambda n: _first_param(n, params)), param_set)))
    return groups + [("head", [f"^{re.escape(head)}"])]


def _outside_head(model: nn.Module, name: str, head: str, params: list[str]) -> list[str]:
    """`name` itself, or the parts of it outside the head when the head sits inside it."""
    if (name + ".").startswith(head):
        return []
    if head.startswith(name + "."):
        module = model.get_submodule(name)
        inner = [f"{name}.{child}" for child, _ in module.named_children()]
        inner += [f"{name}.{param}" for param, _ in module.named_parameters(recurse=False)]
        return [n for child in inner for n in _outside_head(model, child, head, params)]
    return [name] if any(p == name or p.startswith(name + ".") for p in params) else []


def _first_param(name: str, params: list[str]) -> int:
    return next(i for i, p in enumerate(params) if p == name or p.startswith(name + "."))


def _regexes(names: list[str], param_names: set[str]) -> list[str]:
    """Names to regexes; numbered sibling modules share one: ``^features\\.(?:1|2)\\.``."""
    entries: list[tuple[str, list[str], str]] = []  # (escaped prefix, numbers, end), in order of first use
    numbered: dict[str, list[str]] = {}
    for name in names:
        if name in param_names:
            entries.append(("^" + re.escape(name), [], "$"))
            continue
        parent, _, leaf = name.rpartition(".")
        stem, number = re.fullmatch(r"(.*?)(\d*)", leaf).groups()  # type: ignore[union-attr]
        prefix = "^" + re.escape(parent + "." if parent else "") + re.escape(stem)
        if number and prefix in numbered:
            numbered[prefix].append(number)
        elif number:
            numbered[prefix] = [number]
            entries.append((prefix, numbered[prefix], r"\."))
        else:
            entries.append((prefix, [], r"\."))
    return [prefix + (numbers[0] if len(numbers) == 1 else "(?:" + "|".join(numbers) + ")" if numbers else "") + end
            for prefix, numbers, end in entries]


# --------------------------------------------------------------------------- assignment


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
