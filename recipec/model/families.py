"""The model families, one record each: torchvision's zoo, timm, transformers (``hf/``), and your own
``package.module:factory``.

A family is everything recipec knows about the models of one source: how to build one by
name, where its classifier is and how to replace it, its default layer groups, and its
pretrained weights with the preprocessing they expect. :func:`family_of` is the one way from a
``model.arch`` to its record; the functions below it are the public verbs, each asking the
family of its ``arch``. A new family is one more class here and one more name in
:mod:`recipec.recipe.archs`.

Example:
    >>> family_of("timm/convnext_tiny").name
    'timm'
    >>> model = build_architecture("resnet18")
    >>> replace_head(model, "resnet18", num_classes=5).path
    'fc'
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Literal, Protocol

from torch import Tensor, nn

from recipec.model.factory import build_factory
from recipec.model.heads import HeadInfo, last_linear_path, replace_module, resolve_path
from recipec.model.hf import build_hf, hf_record
from recipec.model.hf_groups import hf_groups, hf_head_path, replace_hf_head
from recipec.model.hf_weights import hf_normalization, hf_preprocessing, load_hf_weights
from recipec.recipe.archs import FamilyName, family_name
from recipec.model.presets import body_and_head, checked_head_prefix, zoo_groups
from recipec.model.pretrained import (
    Normalization,
    WeightsInfo,
    load_pretrained_state_dict,
    no_weights_error,
    normalization_of,
    resolve_weights,
    torchvision_preprocessing,
)
from recipec.model.timm import build_timm
from recipec.model.timm_groups import replace_timm_head, timm_groups, timm_head_paths
from recipec.model.timm_weights import load_timm_weights, timm_normalization, timm_preprocessing
from recipec.model.zoo import build_torchvision, head_path

__all__ = ["FACTORY", "FAMILIES", "HF", "TIMM", "TORCHVISION", "Family", "architecture_record", "build_architecture",
           "default_head_path", "family_of", "load_pretrained_weights", "preset_groups", "replace_head",
           "weights_normalization", "weights_preprocessing"]

Groups = list[tuple[str, list[str]]]
HeadType = Literal["linear", "mlp"]
Activation = Literal["relu", "gelu", "silu"]


class Family(Protocol):
    """What recipec knows about the models of one family (see the module docstring)."""

    @property
    def name(self) -> FamilyName:
        """``torchvision``, ``timm``, ``hf`` or ``factory``."""

    @property
    def runs_named_code(self) -> bool:
        """Building a model imports and calls code the recipe names, so a file's recipe needs trust."""

    @property
    def averages_extra_heads(self) -> bool:
        """Extra classifiers the head replacement adds (timm's ``head_dist``) are averaged with the
        main one at inference, not trained with an auxiliary loss."""

    def build(self, arch: str, kwargs: Mapping[str, Any], *, pretrained: bool,
              trust_factories: bool | Collection[str], origin: str, weights: str | None,
              recorded: Mapping[str, Any] | None) -> nn.Module:
        """A model with random weights, nothing downloaded (see :func:`build_architecture`)."""

    def record(self, model: nn.Module) -> dict[str, Any]:
        """What an export must carry (in its provenance) to rebuild the architecture without its source;
        ``recorded`` gives it back to :meth:`build`. Empty for families built by name."""

    def head_path(self, model: nn.Module, arch: str) -> str:
        """Dotted path of the classifier, indices written out (see :func:`default_head_path`)."""

    def replace_head(self, model: nn.Module, arch: str, *, num_classes: int, type: HeadType,
                     hidden: list[int] | None, dropout: float, activation: Activation | None) -> HeadInfo:
        """Put a new classifier in the family's own place for it (see :func:`replace_head`)."""

    def preset_groups(self, arch: str, model: nn.Module, head: str, *, fine: bool) -> Groups:
        """The default layer groups, head last; ``head`` is a checked prefix ending in a dot."""

    def load_weights(self, arch: str, name: str) -> tuple[dict[str, Tensor], WeightsInfo]:
        """The pretrained weights ``name``, read from the local caches."""

    def normalization(self, arch: str, name: str) -> Normalization | None:
        """``(mean, std)`` the pretrained weights ``name`` expect, read without loading them."""

    def preprocessing(self, arch: str, name: str) -> dict[str, Any] | None:
        """How the pretrained weights ``name`` expect images resized (see :func:`weights_preprocessing`)."""


class TorchvisionFamily:
    """torchvision's classification zoo (:mod:`recipec.model.zoo`, :mod:`recipec.model.pretrained`)."""

    name: FamilyName = "torchvision"
    runs_named_code = False
    averages_extra_heads = False

    def build(self, arch: str, kwargs: Mapping[str, Any], *, pretrained: bool,
              trust_factories: bool | Collection[str], origin: str, weights: str | None,
              recorded: Mapping[str, Any] | None) -> nn.Module:
        return build_torchvision(arch, kwargs, pretrained=pretrained)

    def record(self, model: nn.Module) -> dict[str, Any]:
        return {}

    def head_path(self, model: nn.Module, arch: str) -> str:
        return head_path(model, arch) or last_linear_path(model, arch)

    def replace_head(self, model: nn.Module, arch: str, *, num_classes: int, type: HeadType,
                     hidden: list[int] | None, dropout: float, activation: Activation | None) -> HeadInfo:
        return replace_module(model, self.head_path(model, arch), num_classes=num_classes, type=type,
                              hidden=hidden, dropout=dropout, activation=activation)

    def preset_groups(self, arch: str, model: nn.Module, head: str, *, fine: bool) -> Groups:
        return zoo_groups(arch, model, head)

    def load_weights(self, arch: str, name: str) -> tuple[dict[str, Tensor], WeightsInfo]:
        return load_pretrained_state_dict(arch, name)

    def normalization(self, arch: str, name: str) -> Normalization | None:
        return normalization_of(resolve_weights(arch, name))

    def preprocessing(self, arch: str, name: str) -> dict[str, Any] | None:
        return torchvision_preprocessing(arch, name)


class TimmFamily:
    """timm models, ``timm/<name>`` (:mod:`recipec.model.timm` and the ``timm_*`` modules beside it)."""

    name: FamilyName = "timm"
    runs_named_code = False
    averages_extra_heads = True  # a distilled model's head_dist

    def build(self, arch: str, kwargs: Mapping[str, Any], *, pretrained: bool,
              trust_factories: bool | Collection[str], origin: str, weights: str | None,
              recorded: Mapping[str, Any] | None) -> nn.Module:
        return build_timm(arch, kwargs, weights=weights)

    def record(self, model: nn.Module) -> dict[str, Any]:
        return {}

    def head_path(self, model: nn.Module, arch: str) -> str:
        found = timm_head_paths(model)
        return found[0] if found else last_linear_path(model, arch)

    def replace_head(self, model: nn.Module, arch: str, *, num_classes: int, type: HeadType,
                     hidden: list[int] | None, dropout: float, activation: Activation | None) -> HeadInfo:
        # timm's reset_classifier: its pooling and pre-logits norm stay
        return replace_timm_head(model, arch, num_classes=num_classes, type=type, hidden=hidden, dropout=dropout,
                                 activation=activation)

    def preset_groups(self, arch: str, model: nn.Module, head: str, *, fine: bool) -> Groups:
        found = timm_groups(model, [head], fine=fine)
        return found if len(found) > 1 else body_and_head(head)

    def load_weights(self, arch: str, name: str) -> tuple[dict[str, Tensor], WeightsInfo]:
        return load_timm_weights(arch, name)

    def normalization(self, arch: str, name: str) -> Normalization | None:
        return timm_normalization(arch, name)

    def preprocessing(self, arch: str, name: str) -> dict[str, Any] | None:
        return timm_preprocessing(arch, name)


class HFFamily:
    """transformers vision models, ``hf/<repo id or folder>`` (:mod:`recipec.model.hf` and the ``hf_*`` modules beside it)."""

    name: FamilyName = "hf"
    runs_named_code = False  # transformers' own classes, chosen by model_type; never the repository's code
    averages_extra_heads = False

    def build(self, arch: str, kwargs: Mapping[str, Any], *, pretrained: bool,
              trust_factories: bool | Collection[str], origin: str, weights: str | None,
              recorded: Mapping[str, Any] | None) -> nn.Module:
        return build_hf(arch, kwargs, weights=weights, recorded=recorded)

    def record(self, model: nn.Module) -> dict[str, Any]:
        return hf_record(model)  # the config.json (and image processor) it was built from

    def head_path(self, model: nn.Module, arch: str) -> str:
        return hf_head_path(model, arch)

    def replace_head(self, model: nn.Module, arch: str, *, num_classes: int, type: HeadType,
                     hidden: list[int] | None, dropout: float, activation: Activation | None) -> HeadInfo:
        # an ...ForImageClassification keeps its pooling; an AutoModel gets the head on its pooled output
        return replace_hf_head(model, arch, num_classes=num_classes, type=type, hidden=hidden, dropout=dropout,
                               activation=activation)

    def preset_groups(self, arch: str, model: nn.Module, head: str, *, fine: bool) -> Groups:
        return hf_groups(model, head) or body_and_head(head)

    def load_weights(self, arch: str, name: str) -> tuple[dict[str, Tensor], WeightsInfo]:
        return load_hf_weights(arch, name)

    def normalization(self, arch: str, name: str) -> Normalization | None:
        return hf_normalization(arch, name)

    def preprocessing(self, arch: str, name: str) -> dict[str, Any] | None:
        return hf_preprocessing(arch, name)


class FactoryFamily:
    """Your own ``package.module:factory`` (:mod:`recipec.model.factory`): no presets, no pretrained weights."""

    name: FamilyName = "factory"
    runs_named_code = True
    averages_extra_heads = False

    def build(self, arch: str, kwargs: Mapping[str, Any], *, pretrained: bool,
              trust_factories: bool | Collection[str], origin: str, weights: str | None,
              recorded: Mapping[str, Any] | None) -> nn.Module:
        return build_factory(arch, kwargs, trust_factories=trust_factories, origin=origin)

    def record(self, model: nn.Module) -> dict[str, Any]:
        return {}

    def head_path(self, model: nn.Module, arch: str) -> str:
        return last_linear_path(model, arch)

    def replace_head(self, model: nn.Module, arch: str, *, num_classes: int, type: HeadType,
                     hidden: list[int] | None, dropout: float, activation: Activation | None) -> HeadInfo:
        return replace_module(model, self.head_path(model, arch), num_classes=num_classes, type=type,
                              hidden=hidden, dropout=dropout, activation=activation)

    def preset_groups(self, arch: str, model: nn.Module, head: str, *, fine: bool) -> Groups:
        return body_and_head(head)

    def load_weights(self, arch: str, name: str) -> tuple[dict[str, Tensor], WeightsInfo]:
        raise no_weights_error(arch)

    def normalization(self, arch: str, name: str) -> Normalization | None:
        raise no_weights_error(arch)

    def preprocessing(self, arch: str, name: str) -> dict[str, Any] | None:
        return None  # a factory's weights come from a checkpoint, which records its own


TORCHVISION: Family = TorchvisionFamily()
TIMM: Family = TimmFamily()
HF: Family = HFFamily()
FACTORY: Family = FactoryFamily()
FAMILIES: dict[FamilyName, Family] = {family.name: family for family in (TORCHVISION, TIMM, HF, FACTORY)}


def family_of(arch: str) -> Family:
    """The family of ``model.arch``: :data:`TIMM` for ``timm/<name>``, :data:`HF` for ``hf/<repo id or
    folder>``, :data:`FACTORY` for ``package.module:factory``, :data:`TORCHVISION` for any other name
    (checked when built).

    Example:
        >>> family_of("mypkg.nets:small").runs_named_code
        True
    """
    return FAMILIES[family_name(arch)]


def build_architecture(arch: str, kwargs: Mapping[str, Any] | None = None, *, pretrained: bool = False,
                       trust_factories: bool | Collection[str] = True, origin: str = "",
                       weights: str | None = None, recorded: Mapping[str, Any] | None = None) -> nn.Module:
    """Build an architecture with random weights; nothing is downloaded.

    torchvision and timm architectures are looked up by name and never imported from a path. A
    custom factory is imported and called only when trusted: every one is when the recipe is the
    caller's own (``trust_factories=True``, what ``compile_recipe`` does); a recipe read from a
    file (an export's metadata, a training state) passes the exact factories its user trusts,
    and any other is refused before its module is imported (see
    :func:`recipec.model.factory.check_factory_trust`).

    Args:
        arch: a torchvision classification model name, ``timm/<name>``, or
            ``"package.module:factory"`` where factory may be a dotted attribute (``nets:Zoo.small``).
        kwargs: keyword arguments for the model class or factory (``weights`` is not one: that
            is ``model.weights``).
        pretrained: the model is about to receive torchvision's pretrained weights; build it as
            torchvision does for them (googlenet and inception_v3 get ``transform_input=True``).
        trust_factories: ``True`` when the caller wrote the recipe, else the ``"package.module:factory"``
            names the caller trusts (``()`` or ``False``: none).
        origin: where the recipe came from (a file), named in a refusal.
        weights: ``model.weights``; a ``timm/<name>`` model is built from that tag's pretrained
            config (its class count and image size), by name, never imported from a path; an ``hf/``
            model from the ``config.json`` of that revision.
        recorded: an export's provenance, holding what :func:`architecture_record` recorded: an
            ``hf/`` model is rebuilt from its recorded config, without the repository.

    Returns:
        The model, in training mode.

    Raises:
        ModelError: unknown architecture (with suggestions), a factory that cannot be imported,
            found or called or is not a model factory, or arguments the model rejects.
        UntrustedFactoryError: a custom factory that ``trust_factories`` does not name.

    Example:
        >>> model = build_architecture("vit_b_16", {"image_size": 32})
    """
    return family_of(arch).build(arch, dict(kwargs or {}), pretrained=pretrained, trust_factories=trust_factories,
                                 origin=origin, weights=weights, recorded=recorded)


def architecture_record(model: nn.Module, arch: str) -> dict[str, Any]:
    """What an export of ``model`` carries in its provenance so that :func:`build_architecture` (with
    ``recorded``) rebuilds it from the file alone: for ``hf/``, the ``config.json`` and image processor
    config (``hf_model``); nothing for families built by name.

    Example:
        >>> architecture_record(build_architecture("resnet18"), "resnet18")
        {}
    """
    return family_of(arch).record(model)


def default_head_path(model: nn.Module, arch: str) -> str:
    """Dotted path of the classifier of ``arch``'s family, indices written out (``classifier.6``).

    Custom factories, and families recipec knows no classifier of, use the last ``nn.Linear``
    in registration order.

    Raises:
        ModelError: the family's path is missing, or a model without one has no ``nn.Linear``.
    """
    return family_of(arch).head_path(model, arch)


def replace_head(
    model: nn.Module,
    arch: str,
    *,
    num_classes: int,
    type: HeadType = "linear",
    hidden: list[int] | None = None,
    dropout: float = 0.0,
    activation: Activation | None = None,
    at: str | None = None,
) -> HeadInfo:
    """Replace the classifier of ``model`` with a new head of ``num_classes`` outputs, in place.

    The new head is created on the device and dtype of the module it replaces (see
    :func:`recipec.model.heads.replace_module`). A timm model's classifier is replaced through
    timm's ``reset_classifier``, so its pooling and pre-logits norm stay, and a distilled one's
    ``head_dist`` is replaced too.

    Args:
        model: the network, changed in place.
        arch: its architecture name (picks the family's classifier).
        num_classes: outputs of the new head.
        type, hidden, dropout, activation: see :func:`recipec.model.heads.build_head`.
        at: dotted path of the module to replace instead of the family's classifier
            (``classifier.-1`` counts from the end).

    Returns:
        What was replaced, by what, and the new head's state-dict prefix.

    Raises:
        ModelError: ``at`` names no module (with the nearest paths), or the module's input size
            cannot be read.

    Example:
        >>> info = replace_head(resnet18(), "resnet18", num_classes=5, dropout=0.2)
        >>> info.path, info.new
        ('fc', 'Linear(512 -> 5, dropout 0.2)')
    """
    if at is None:
        return family_of(arch).replace_head(model, arch, num_classes=num_classes, type=type, hidden=hidden,
                                            dropout=dropout, activation=activation)
    return replace_module(model, resolve_path(model, at), num_classes=num_classes, type=type, hidden=hidden,
                          dropout=dropout, activation=activation)


def preset_groups(arch: str, model: nn.Module, head_prefix: str, *, fine: bool = False) -> Groups:
    """The default layer groups of an architecture, as (name, regexes), earliest first, head last.

    torchvision families get presets written from the module names the model has
    (:mod:`recipec.model.presets`); timm models the groups of their ``group_matcher``; a custom
    factory, or a model whose family has no presets, gets ``body`` and ``head``. Parameters under
    ``head_prefix`` form the last group, ``head``, and are taken out of every other group.

    Args:
        arch: architecture name as in the recipe's ``model.arch``.
        model: the model, with its new head in place.
        head_prefix: state-dict prefix of the head, e.g. ``"fc."`` or ``"heads.head."``.
        fine: ``timm/<name>`` only: the groups of timm's fine ``group_matcher`` (blocks), not the
            coarse one (stages); see :func:`recipec.model.timm_groups.timm_groups`.

    Returns:
        (group name, regexes) pairs, to be checked by :func:`~recipec.model.groups.assign_groups`.

    Raises:
        GroupError: no parameter starts with ``head_prefix``.

    Example:
        >>> preset_groups("resnet18", model, "fc.")[0]
        ('stem', ['^conv1\\\\.', '^bn1\\\\.'])
    """
    head = checked_head_prefix(model, head_prefix)
    return family_of(arch).preset_groups(arch, model, head, fine=fine)


def load_pretrained_weights(arch: str, name: str) -> tuple[dict[str, Tensor], WeightsInfo]:
    """Read the pretrained weights ``name`` of ``arch`` from the local caches, nothing unpickled but tensors.

    torchvision: torch hub's cache (:func:`recipec.model.pretrained.load_pretrained_state_dict`);
    timm: the Hugging Face hub's cache (:func:`recipec.model.timm_weights.load_timm_weights`); ``hf/``: the
    repository (cache) or folder at revision ``name`` (:func:`recipec.model.hf_weights.load_hf_weights`).
    Nothing is downloaded unless ``RECIPEC_ALLOW_DOWNLOAD=1``.

    Raises:
        WeightsUnavailableError: not cached (the message gives the exact path and where to get it).
        ModelError: unknown architecture or weights name, a custom factory (it has no weights),
            a cached file that is corrupt or unsafe to unpickle.
    """
    return family_of(arch).load_weights(arch, name)


def weights_normalization(arch: str, name: str) -> Normalization | None:
    """``(mean, std)`` of the pretrained weights ``name`` of ``arch`` (torchvision's transforms, timm's
    ``pretrained_cfg``), read without loading them.

    Raises:
        ModelError: unknown architecture or weights name, or a custom factory.
    """
    return family_of(arch).normalization(arch, name)


def weights_preprocessing(arch: str, name: str) -> dict[str, Any] | None:
    """How the pretrained weights ``name`` of ``arch`` expect images resized, read without loading them.

    timm: the ``pretrained_cfg`` (``input_size``, ``interpolation``, ``crop_pct``, ``crop_mode``);
    torchvision: the weights' ``transforms()`` (``crop_size``, ``resize_size``, ``interpolation``);
    ``hf/``: the repository's ``preprocessor_config.json`` (``size``, ``crop_size``, ``crop_pct``, ``resample``).
    Returns ``{"input_size": side, "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode":
    "center", "resize_size": 256 or None}`` (``resize_size``: torchvision's, for ``input_size``; timm
    adds ``mean``, the colour ``crop_mode: border`` pads with), or None when the weights define no
    resize, and for a custom factory, which has no pretrained weights.

    Raises:
        ModelError: unknown architecture or weights name.
    """
    return family_of(arch).preprocessing(arch, name)
