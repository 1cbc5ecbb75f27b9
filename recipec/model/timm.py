"""timm backbones (``model.arch: timm/<name>``): names, pretrained tags, building without downloads.

timm is an optional extra (``pip install 'recipec[timm]'``) and is imported only in these
modules, when a recipe names a timm model. The pretrained weights are read offline-first by
:mod:`recipec.model.timm_weights`; heads and layer groups go through timm's own interfaces in
:mod:`recipec.model.timm_groups`. Their public names are importable from here too.
"""

from __future__ import annotations

import contextlib
import difflib
import os
from collections.abc import Iterator, Mapping
from typing import Any

from torch import nn

from recipec.errors import ModelError, WeightsUnavailableError

__all__ = ["PREFIX", "build_timm", "downloads_blocked", "is_timm", "load_timm_weights", "preprocessing_of",
           "pretrained_cfg", "replace_timm_head", "resolve_tag", "timm_groups", "timm_head_paths"]

PREFIX = "timm/"
INSTALL = "pip install 'recipec[timm]'"
# create_model arguments that would fetch or load weights behind model.weights
_WEIGHT_KWARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "pretrained_strict")


def is_timm(arch: str) -> bool:
    """Whether ``model.arch`` names a timm model (``timm/convnext_tiny``)."""
    return arch.startswith(PREFIX)


def _timm() -> Any:
    try:
        import timm
        import timm.models
    except ImportError as exc:
        raise ModelError((("model", "arch"), (
            f"timm architectures need the timm extra, which is not installed ({exc}); run: {INSTALL}"))) from exc
    return timm


def _name(arch: str) -> str:
    timm = _timm()
    name = arch[len(PREFIX):]
    if not timm.models.is_model(name) or "." in name:
        names = timm.list_models()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(repr(PREFIX + n) for n in close)}? " if close else ""
        raise ModelError((("model", "arch"), (
            f"unknown timm architecture {name!r}; {hint}(any of timm's {len(names)} models, timm.list_models(); "
            "the pretrained tag goes in model.weights, not after a dot)")))
    return name


def resolve_tag(arch: str, weights: str) -> str:
    """The pretrained tag ``weights`` names for ``arch``: itself, or timm's default tag for ``DEFAULT``.

    Raises:
        ModelError: at ``model.weights``: no such tag (listing the model's tags), or none at all.
    """
    timm = _timm()
    name = _name(arch)
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
    timm = _timm()
    name = _name(arch)
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


@contextlib.contextmanager
def downloads_blocked() -> Iterator[None]:
    """No hub or URL download while building, unless ``RECIPEC_ALLOW_DOWNLOAD=1``.

    A ``package.module:factory`` (``timm:create_model`` with ``pretrained: true``) would otherwise
    fetch weights behind the offline policy: the hub is put offline (cached files still load) and
    torch hub's ``download_url_to_file`` refuses, so a missing file is an error naming it.
    """
    if os.environ.get("RECIPEC_ALLOW_DOWNLOAD") == "1":
        yield
        return
    import torch.hub

    hub_constants: Any = None
    with contextlib.suppress(ImportError):
        from huggingface_hub import constants as hub_constants
    def refuse(url: str, dst: str, *args: Any, **kwargs: Any) -> None:
        raise WeightsUnavailableError((("model", "arch"), (
            f"refused to download {url} to {dst}: recipec downloads nothing unless RECIPEC_ALLOW_DOWNLOAD=1; "
            "put the file there, or set the environment variable")))

    saved_download, saved_offline = torch.hub.download_url_to_file, getattr(hub_constants, "HF_HUB_OFFLINE", None)
    torch.hub.download_url_to_file = refuse
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    except Exception as exc:
        if type(exc).__name__ in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
            raise WeightsUnavailableError((("model", "arch"), (
                f"the factory asked the Hugging Face hub for weights that are not in the local cache ({exc}); "
                "recipec downloads nothing unless RECIPEC_ALLOW_DOWNLOAD=1 (or use model.arch: timm/<name> "
                "with model.weights)"))) from exc
        raise
    finally:
        torch.hub.download_url_to_file = saved_download
        if hub_constants is not None:
            hub_constants.HF_HUB_OFFLINE = saved_offline


def pretrained_cfg(arch: str, weights: str) -> Any:
    """timm's ``PretrainedCfg`` of ``arch`` with tag ``weights`` (``DEFAULT`` resolved)."""
    timm = _timm()
    return timm.models.get_pretrained_cfg(f"{_name(arch)}.{resolve_tag(arch, weights)}")


# the weights and the model's structure live beside this module; their names stay importable from here
from recipec.model.timm_groups import replace_timm_head, timm_groups, timm_head_paths  # noqa: E402
from recipec.model.timm_weights import load_timm_weights, preprocessing_of  # noqa: E402
