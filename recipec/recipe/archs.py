"""What a ``model.arch`` string names: the one place that reads its ``timm/`` and ``hf/`` prefixes and its ``:``.

``timm/<name>`` is a timm model, ``hf/<repo id or folder>`` a transformers vision model,
``package.module:factory`` your own factory, anything else a torchvision classification model. The records that know what each family can do are in
:mod:`recipec.model.families`; this module only reads names, torch-free, so the recipe language
(``validate``), the card and the model families all read them alike. :func:`arch_problem` checks a
name the way ``recipec validate`` does: torchvision names against the shipped list of
:mod:`recipec.recipe.arch_names`, timm names against the installed timm's registered models (read
from its source files, so torch is not imported for a name that exists), ``hf/`` names by their
grammar (a local folder must hold a ``config.json`` that names no code of its own), factories not at all.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import json
import os
import re
from collections.abc import Iterable
from typing import Any, Literal

from recipec.recipe.arch_names import TORCHVISION_CLASSIFIERS, TORCHVISION_OTHERS

__all__ = ["HF_INSTALL", "HF_PREFIX", "TIMM_PREFIX", "FamilyName", "arch_problem", "family_name", "hf_config_problem",
           "hf_folder", "hf_name", "timm_name"]

FamilyName = Literal["torchvision", "timm", "hf", "factory"]
TIMM_PREFIX = "timm/"
TIMM_INSTALL = "pip install 'recipec[timm]'"
HF_PREFIX = "hf/"
HF_INSTALL = "pip install 'recipec[hf]'"
GRAMMAR = ("a torchvision classification model (resnet18, vit_b_16, ...), timm/<name> for a timm model "
           "(timm/convnext_tiny), hf/<repo id or folder> for a transformers model (hf/facebook/dinov2-small), "
           "or package.module:factory for your own")
# a Hugging Face Hub repository id, as the Hub spells them: name or org/name
_HF_REPO = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?(?:/[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)?")
# a local folder: hf/./models/vit, hf/../vit (from the working directory), hf//abs/vit, hf/~/vit
_HF_FOLDER = ("./", "../", "/", "~/")
# timm registers each model with a decorated function: `@register_model` then `def convnext_atto(...)`
_REGISTERED = re.compile(r"^@register_model\s*\n(?:@[^\n]*\n)*def\s+([A-Za-z0-9_]+)\s*\(", re.M)


def family_name(arch: str) -> FamilyName:
    """``timm`` for ``timm/convnext_tiny``, ``hf`` for ``hf/<repo id or folder>``, ``factory`` for
    ``package.module:factory``, else ``torchvision``."""
    if arch.startswith(TIMM_PREFIX):
        return "timm"
    if arch.startswith(HF_PREFIX):
        return "hf"
    if ":" in arch:
        return "factory"
    return "torchvision"


def timm_name(arch: str) -> str:
    """The timm model name of ``timm/<name>`` (``convnext_tiny``); the name is not checked."""
    return arch[len(TIMM_PREFIX):]


def hf_name(arch: str) -> str:
    """The repository id or folder of ``hf/<repo id or folder>`` (``facebook/dinov2-small``, ``./models/vit``)."""
    return arch[len(HF_PREFIX):]


def hf_folder(arch: str) -> str | None:
    """The local folder ``hf/./models/vit`` names (``~`` expanded; relative to the working directory), or
    None for a Hub repository id."""
    name = hf_name(arch)
    return os.path.expanduser(name) if name.startswith(_HF_FOLDER) else None


def hf_config_problem(config: Any, where: str) -> str | None:
    """Why a ``config.json`` (as read) must not be built, torch-free: not an object, no ``model_type``, or
    code of its own (``auto_map``: transformers would import the repository's modules; recipec never
    passes ``trust_remote_code``). Whether transformers knows the ``model_type`` is asked when building.

    Args:
        config: the parsed JSON.
        where: the file, named in the message.
    """
    if not isinstance(config, dict):
        return f"{where} is not a transformers config (a JSON object), got {type(config).__name__}"
    if "auto_map" in config:
        auto_map = config["auto_map"]
        names = ", ".join(sorted(map(str, auto_map))) if isinstance(auto_map, dict) and auto_map else repr(auto_map)
        return (f"{where} names code of its own (auto_map: {names}), which recipec never "
                "imports or runs (no trust_remote_code): use a model transformers itself implements")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        return f"{where} has no model_type, so no transformers architecture is named"
    return None


def arch_problem(arch: str) -> str | None:
    """Why ``arch`` names no model recipec can build, or None; with the nearest names.

    torchvision names are checked against :data:`~recipec.recipe.arch_names.TORCHVISION_CLASSIFIERS`
    (a detection or video model is named as such); ``timm/<name>`` against the installed timm, whose
    model files are read rather than imported: only a name they lack imports timm (and torch, ~3 s)
    to ask timm itself. ``package.module:factory`` is left to ``recipec plan``, which imports it.

    Example:
        >>> arch_problem("resnet-18")
        "unknown architecture 'resnet-18'; did you mean 'resnet18'? (model.arch is a torchvision ...)"
    """
    family = family_name(arch)
    if family == "factory":
        return None
    if family == "timm":
        return _timm_problem(timm_name(arch))
    if family == "hf":
        return _hf_problem(arch)
    if arch in TORCHVISION_CLASSIFIERS:
        return None
    for kind, names in TORCHVISION_OTHERS.items():
        if arch in names:
            return (f"{arch!r} is a torchvision {kind.replace('_', ' ')} model; recipec fine-tunes image "
                    f"classifiers: {GRAMMAR}")
    timm_names = _timm_names() or ()
    close = (_same(arch, TORCHVISION_CLASSIFIERS) or [TIMM_PREFIX + n for n in _same(arch, timm_names)]
             or _nearest(arch, TORCHVISION_CLASSIFIERS))
    hint = f"; did you mean {' or '.join(repr(n) for n in close)}?" if close else ""
    timm = "" if timm_names else f"; timm models need the timm extra: {TIMM_INSTALL}"
    return f"unknown architecture {arch!r}{hint} (model.arch is {GRAMMAR}{timm})"


def _timm_problem(name: str) -> str | None:
    if "." in name:
        base, _, tag = name.partition(".")
        return (f"{TIMM_PREFIX}{name}: the pretrained tag goes in model.weights, not after a dot: "
                f"write arch: {TIMM_PREFIX}{base} and weights: {tag}")
    names = _timm_names()
    if names is None:
        return f"{TIMM_PREFIX}{name} needs the timm extra, which is not installed: {TIMM_INSTALL}"
    if name in names:
        return None
    # timm names are identifiers; another one the files lack (a deprecated alias?) is the installed timm's to judge
    listed = sorted(names) if not re.fullmatch(r"[A-Za-z0-9_]+", name) or not names else _ask_timm(name)  # a name the files lack (a deprecated alias?): the installed timm decides
    if listed is None:
        return None
    close = _nearest(name, listed)
    hint = f"; did you mean {' or '.join(repr(TIMM_PREFIX + n) for n in close)}?" if close else ""
    return f"unknown timm architecture {name!r}{hint} (any of timm's {len(listed)} models, timm.list_models())"


def _hf_problem(arch: str) -> str | None:
    folder, name = hf_folder(arch), hf_name(arch)
    if folder is None and (not _HF_REPO.fullmatch(name) or "--" in name or ".." in name):
        return (f"{arch}: {name!r} is neither a Hugging Face Hub repository id (org/name) nor a local folder "
                "(hf/./path from the working directory, hf//absolute/path)")
    if importlib.util.find_spec("transformers") is None:
        return f"{arch} needs the hf extra (transformers), which is not installed: {HF_INSTALL}"
    if folder is None:
        return None  # in the local Hugging Face cache or not: recipec plan says (nothing is downloaded here)
    config = os.path.join(folder, "config.json")
    if not os.path.isdir(folder):
        return f"{arch}: no such folder {os.path.abspath(folder)} (a local folder is read from the working directory)"
    if not os.path.isfile(config):
        return f"{arch}: {os.path.abspath(folder)} has no config.json (a save_pretrained folder has one)"
    try:
        with open(config, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"{arch}: {config} cannot be read as JSON ({exc})"
    return hf_config_problem(data, config)


def _same(name: str, names: Iterable[str]) -> list[str]:
    """Names equal to ``name`` but for case, ``-`` and ``_`` (``ResNet-18``, ``vit-b-16``)."""
    squeezed = _squeeze(name)
    return [n for n in names if _squeeze(n) == squeezed][:3]


def _nearest(name: str, names: Iterable[str]) -> list[str]:
    """:func:`_same`'s names, else difflib's nearest three."""
    names = list(names)
    same = _same(name, names)
    if same:
        return same
    lowered = {n.lower(): n for n in names}
    return [lowered[n] for n in difflib.get_close_matches(name.lower().replace("-", "_"), lowered, n=3, cutoff=0.6)]


def _squeeze(name: str) -> str:
    return re.sub(r"[-_\s]", "", name.lower())


@functools.lru_cache(maxsize=1)
def _timm_names() -> frozenset[str] | None:
    """The models the installed timm registers, read from its model files (~40 ms); None without timm."""
    try:
        spec = importlib.util.find_spec("timm")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(next(iter(spec.submodule_search_locations)), "models")
    names: set[str] = set()
    try:
        entries = [e.path for e in os.scandir(folder) if e.name.endswith(".py")]
        for path in entries:
            with open(path, encoding="utf-8") as f:
                names.update(_REGISTERED.findall(f.read()))
    except (OSError, UnicodeDecodeError):
        pass  # another layout: every name is asked of timm itself
    return frozenset(names)


def _ask_timm(name: str) -> list[str] | None:
    """None when the installed timm knows ``name`` (or cannot be imported: plan will say why), else its models."""
    try:
        import timm.models
    except Exception:  # a broken install is reported by the build, with its own error
        return None
    if timm.models.is_model(name):
        return None
    return list(timm.list_models())
