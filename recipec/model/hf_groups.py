"""The structure of an ``hf/`` model (:class:`recipec.model.hf.HFClassifier`): its classifier and its layer groups.

An ``...ForImageClassification`` keeps transformers' pooling and gets recipec's head in place of its
``classifier``; a model without one (``AutoModel``: CLIP, SigLIP vision towers) gets recipec's head
on its pooled output, at ``head``. Groups follow the model's structure: ``stem`` (the embeddings and
what precedes the encoder), one group per encoder layer or stage (``layer.0``, ``stages.2``), ``neck``
(what follows the encoder before the classifier: the final layer norm, a pooler), ``head``.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from recipec.errors import ModelError
from recipec.model.heads import HeadInfo, build_head, describe_module, last_linear_path, replace_module
from recipec.model.hf import HFClassifier
from recipec.model.presets import module_regexes, outermost_modules

__all__ = ["hf_groups", "hf_head_path", "replace_hf_head"]

Groups = list[tuple[str, list[str]]]


def _checked(model: nn.Module, arch: str) -> HFClassifier:
    if not isinstance(model, HFClassifier):
        raise ModelError((("model", "arch"), f"{arch}: expected the model recipec builds for hf/, got {type(model).__name__}"))
    return model


def hf_head_path(model: nn.Module, arch: str) -> str:
    """Dotted path of the classifier: ``hf.classifier`` (the last Linear inside it when it is a
    Sequential), or recipec's ``head`` on a model without a classifier of its own.

    Raises:
        ModelError: at ``model.head``: a model without a classifier and without a head yet.
    """
    wrapper = _checked(model, arch)
    if wrapper.pooling != "logits":
        if wrapper.head is None:
            raise ModelError((("model", "head"), (
                f"{arch} ({type(wrapper.hf).__name__}) has no classifier of its own; set model.head.num_classes "
                "to put recipec's head on its pooled output")))
        return "head"
    classifier = getattr(wrapper.hf, "classifier", None)
    if isinstance(classifier, nn.Linear):
        return "hf.classifier"
    if isinstance(classifier, nn.Module):
        linears = [n for n, m in classifier.named_modules() if isinstance(m, nn.Linear)]
        if linears:
            return f"hf.classifier.{linears[-1]}"
    return last_linear_path(model, arch)


def replace_hf_head(model: nn.Module, arch: str, *, num_classes: int, type: Any, hidden: list[int] | None,
                    dropout: float, activation: Any) -> HeadInfo:
    """Put recipec's head of ``num_classes`` outputs in the classifier's place, or on the pooled output.

    The config's ``num_labels`` follows, so an export records the model as it is.

    Returns:
        What was replaced, by what, and the new head's state-dict prefix; its note says how the
        model pools (the plan shows it).
    """
    wrapper = _checked(model, arch)
    note = wrapper.describe()
    if wrapper.pooling == "logits":
        info = replace_module(model, hf_head_path(model, arch), num_classes=num_classes, type=type, hidden=hidden,
                              dropout=dropout, activation=activation)
    else:
        old = "none" if wrapper.head is None else describe_module(wrapper.head)
        head = build_head(wrapper.width, num_classes=num_classes, type=type, hidden=hidden, dropout=dropout,
                          activation=activation)
        wrapper.head = head
        info = HeadInfo(path="head", in_features=wrapper.width, old=old, new=describe_module(head), param_prefix="head.",
                        num_params=sum(p.numel() for p in head.parameters()))
    wrapper.config.num_labels = num_classes
    return HeadInfo(path=info.path, in_features=info.in_features, old=info.old, new=info.new,
                    param_prefix=info.param_prefix, num_params=info.num_params, notes=(note, *info.notes),
                    aux_prefixes=info.aux_prefixes)


def hf_groups(model: nn.Module, head: str) -> Groups:
    """``stem``, the encoder's layers or stages in order, ``neck`` (if any), ``head``; as (name, regexes).

    The encoder's layers are the ``nn.ModuleList`` holding most of the parameters (``vit.encoder.layer``,
    ``convnext.encoder.stages``, ``swin.encoder.layers``); parameters registered before it are the stem,
    after it the neck, and any between two layers go with the layer before them. Empty when the model
    has no such list (the family then gives ``body`` and ``head``).

    Args:
        model: the model, with its new head in place.
        head: the head's state-dict prefix, ending in a dot.
    """
    params = [n for n, _ in model.named_parameters()]
    body = [n for n in params if not n.startswith(head)]
    blocks = _blocks(model)
    if not blocks:
        return []
    spans = [[n for n in body if n.startswith(f"{block}.")] for block in blocks]
    blocks, spans = [b for b, s in zip(blocks, spans) if s], [s for s in spans if s]  # tied: named once, elsewhere
    order = {name: i for i, name in enumerate(body)}
    first, last = order[spans[0][0]], order[spans[-1][-1]]
    inside = {n for span in spans for n in span}
    stem = [n for n in body if order[n] < first]
    neck = [n for n in body if order[n] > last]
    extras: dict[int, list[str]] = {}  # between two layers: with the layer before them
    for n in body:
        if first <= order[n] <= last and n not in inside:
            extras.setdefault(max(i for i, span in enumerate(spans) if order[span[0]] < order[n]), []).append(n)
    param_set = set(params)
    groups: Groups = []
    if stem:
        groups.append(("stem", module_regexes(outermost_modules(stem, params), param_set)))
    used = {"stem", "neck", "head"}
    for i, block in enumerate(blocks):
        groups.append((_name(block, used), [f"^{re.escape(block)}\\.", *(f"^{re.escape(n)}$" for n in extras.get(i, []))]))
    if neck:
        groups.append(("neck", module_regexes(outermost_modules(neck, params), param_set)))
    groups.append(("head", [f"^{re.escape(head)}"]))
    return groups


def _blocks(model: nn.Module) -> list[str]:
    """The children with parameters of the ModuleList that holds the most parameters (the outermost on a tie)."""
    best: tuple[int, int, str] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            count = sum(p.numel() for p in module.parameters())
            key = (count, -name.count("."), name)
            if count and (best is None or key[:2] > best[:2]):
                best = key
    if best is None:
        return []
    container = model.get_submodule(best[2])
    return [f"{best[2]}.{n}" for n, child in container.named_children() if next(child.parameters(), None) is not None]


def _name(block: str, used: set[str]) -> str:
    """``hf.vit.encoder.layer.3`` -> ``layer.3``; ``hf.convnext.encoder.stages.1`` -> ``stages.1``."""
    base = ".".join(block.split(".")[-2:])
    name, k = base, 2
    while name in used:
        name, k = f"{base}_{k}", k + 1
    used.add(name)
    return name
