"""timm backbones (``model.arch: timm/<name>``): names, pretrained tags, building without downloads.

timm is an optional extra (``pip install 'recipec[timm]'``) and is imported only in these
modules, when a recipe names a timm model. The pretrained weights are read offline-first by
:mod:`recipec.model.timm_weights`; heads and layer groups go through timm's own interfaces in
:mod:`recipec.model.timm_groups`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from torch import nn

from recipec.errors import ModelError
from recipec.recipe.archs import TIMM_PREFIX, timm_name
from recipec.model.offline import downloads_blocked

__all__ = ["INSTALL", "build_timm", "import_timm", "model_name", "pretrained_cfg", "resolve_tag"]

INSTALL = "pip install 'recipec[timm]'"
# create_model arguments that would fetch or load weights behind model.weights
_WEIGHT_KWARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "pretrained_strict")


def import_timm() -> Any:
    """The ``timm`` module, imported on first use.

    Raises:
        ModelError: at ``model.arch``: timm is not installed (with the install command).
    """
    try:
        import timm  # noqa: PLC0415  (optional extra, imported when a recipe names a timm model)
        import timm.models  # noqa: PLC0415
    except ImportError as exc:
        raise ModelError((("model", "arch"), (
            f"timm architectures need the timm extra, which is not installed ({exc}); run: {INSTALL}"))) from exc
    return timm


def model_name(arch: str) -> str:
    """timm's name of ``timm/<name>``, checked against the installed timm's models.

    Raises:
        ModelError: at ``model.arch``: timm missing, or no such model (with the nearest names).
    """
    timm = import_timm()
    name = timm_name(arch)
    if not timm.models.is_model(name) or "." in name:
        names = timm.list_models()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(repr(TIMM_PREFIX + n) for n in close)}? " if close else ""
        raise ModelError((("model", "arch"), (
            f"unknown timm architecture {name!r}; {hint}(any of timm's {len(names)} models, timm.list_models(); "
            "the pretrained tag goes in model.weights, not after a dot)")))
    return name


def resolve_tag(arch: str, weights: str) -> str:
    """The pretrained tag ``weights`` names for ``arch``: itself, or timm's default tag for ``DEFAULT``.

    Raises:
        ModelError: at ``model.weights``: no such tag (listing the model's tags), or none at all.
    """
    timm = import_timm()
    name = model_name(arch)
    tags = [p.partition(".")[2] for p in timm.list_pretrained(f"{name}.*")]
    if weights == "DEFAULT" and tags:
        return str(timm.models.get_pretrained_cfg(name).tag or tags[0])
    if weights not in tags:
        close = difflib.get_close_matches(weights, tags, n=2)
        hint = f"did you mean {' or '.join(repr(t) for t in close)}? " if close else ""
        listing = ", ".join(tags) if tags else "none: train it from model.weights: null"
        raise ModelError((("model", "weights"), (
            f"unknown pretrained tag {weights!r} for {arch}; {hint}timm's tags: {listing} (or DEFAULT, or null)")))
    return weights


def build_timm(arch: str, kwargs: Mapping[str, Any], *, weights: str | None = None) -> nn.Module:
    """``timm.create_model`` by name, random weights, nothing fetched.

    With ``weights`` the model is built from that tag's pretrained config (``in21k`` tags bring
    their 21,843 classes, 384-px tags their image size), so the weights fit it exactly.

    Raises:
        ModelError: timm missing, an unknown name or tag, or ``kwargs`` create_model rejects.
    """
    timm = import_timm()
    name = model_name(arch)
    bad = [k for k in _WEIGHT_KWARGS if k in kwargs]
    if bad:
        raise ModelError([(("model", "kwargs", k), (
            "recipec loads weights itself, offline-first: set model.weights to a pretrained tag (or DEFAULT), "
            "or load a file with source.checkpoint") ) for k in bad])
    full = f"{name}.{resolve_tag(arch, weights)}" if weights is not None else name
    try:
        with downloads_blocked():
            return timm.create_model(full, pretrained=False, **dict(kwargs))
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise ModelError((("model", "kwargs"), f"{arch} rejected its arguments {dict(kwargs)!r}: {exc}")) from exc


def pretrained_cfg(arch: str, weights: str) -> Any:
    """timm's ``PretrainedCfg`` of ``arch`` with tag ``weights`` (``DEFAULT`` resolved)."""
    timm = import_timm()
    return timm.models.get_pretrained_cfg(f"{model_name(arch)}.{resolve_tag(arch, weights)}")

