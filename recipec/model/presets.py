"""Preset layer groups: the default groups of every torchvision classification family, and the
regex writing every family's presets share.

A preset is written from the module names the model actually has, so depth variants
(vit_l_16, mobilenet_v3_small) get their own regexes; :func:`recipec.model.groups.assign_groups`
then checks that they partition the model's parameters.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

from torch import nn

from recipec.errors import GroupError
from recipec.model.zoo import family_of

__all__ = ["body_and_head", "checked_head_prefix", "module_regexes", "outermost_modules", "zoo_groups"]

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


# zoo.family_of(arch) -> preset; a family in neither table (e.g. "custom") gets body and head.
_DYNAMIC: dict[str, Callable[[nn.Module], _Preset]] = {
    "vgg": _pooled, "alexnet": _pooled, "squeezenet": _pooled, "vit": _vit,
    "mobilenet": _mobilenet, "efficientnet": _mobilenet, "mnasnet": _mnasnet,
}


def checked_head_prefix(model: nn.Module, head_prefix: str) -> str:
    """``head_prefix`` ending in a dot, checked to start the name of some parameter of ``model``.

    Raises:
        GroupError: no parameter starts with ``head_prefix``.
    """
    head = head_prefix if head_prefix.endswith(".") else head_prefix + "."
    params = [name for name, _ in model.named_parameters()]
    if not any(name.startswith(head) for name in params):
        raise GroupError(f"no parameter of the model starts with the head prefix {head!r}; "
                         f"the head's parameters are named e.g. {', '.join(params[-2:])}")
    return head


def body_and_head(head: str) -> list[tuple[str, list[str]]]:
    """The two groups of a family with no presets: ``body`` (everything but the head) and ``head``."""
    return [("body", [f"^(?!{re.escape(head)})"]), ("head", [f"^{re.escape(head)}"])]


def zoo_groups(arch: str, model: nn.Module, head: str) -> list[tuple[str, list[str]]]:
    """The default layer groups of a torchvision architecture, as (name, regexes), earliest first, head last.

    The family is ``zoo.family_of(arch)`` (``resnet50`` -> resnet). Regexes are written from the
    module names the model has, so depth variants (vit_l, mobilenet_v3_small) get their own.
    Parameters under ``head`` (a checked prefix, see :func:`checked_head_prefix`) form the last
    group, ``head``, and are taken out of every other group (``classifier.6.`` leaves
    ``classifier.0`` and ``.3`` to the ``classifier`` group of a vgg). A family with no preset
    gets :func:`body_and_head`.
    """
    params = [name for name, _ in model.named_parameters()]
    family = family_of(arch)
    if family in _STATIC:
        preset = _STATIC[family]
    elif family in _DYNAMIC:
        preset = _DYNAMIC[family](model)
    else:
        return body_and_head(head)
    param_set = set(params)
    candidates = [name for name, _ in model.named_modules() if name] + params
    groups: list[tuple[str, list[str]]] = []
    for name, patterns in preset:
        compiled = [re.compile(p) for p in patterns]
        matched = [c for c in candidates if any(p.fullmatch(c) for p in compiled)]
        outermost = [c for c in matched if not any(c.startswith(m + ".") for m in matched)]
        names = [n for c in outermost for n in _outside_head(model, c, head, params)]
        if names:
            groups.append((name, module_regexes(sorted(names, key=lambda n: _first_param(n, params)), param_set)))
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


def module_regexes(names: list[str], param_names: set[str]) -> list[str]:
    """Module and parameter names to regexes; numbered sibling modules share one: ``^features\\.(?:1|2)\\.``.

    A name in ``param_names`` is matched exactly (``^cls_token$``), any other as a module prefix.
    """
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


def outermost_modules(members: list[str], params: list[str]) -> list[str]:
    """The shortest module prefixes (or parameter names) that cover ``members`` and nothing else."""
    member_set = set(members)
    under: dict[str, list[str]] = {}  # module prefix -> the parameters below it
    for param in params:
        parts = param.split(".")
        for k in range(1, len(parts)):
            under.setdefault(".".join(parts[:k]), []).append(param)
    out: list[str] = []
    for name in members:
        parts = name.split(".")
        chosen = name
        for k in range(1, len(parts)):
            prefix = ".".join(parts[:k])
            if all(p in member_set for p in under[prefix]):
                chosen = prefix
                break
        if chosen not in out:
            out.append(chosen)
    return out
