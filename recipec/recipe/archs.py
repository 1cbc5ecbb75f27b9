"""What a ``model.arch`` string names: the one place that reads its ``timm/`` prefix and its ``:``.

``timm/<name>`` is a timm model, ``package.module:factory`` your own factory, anything else a
torchvision classification model (checked against the zoo when it is built). The records that
know what each family can do are in :mod:`recipec.model.families`; this module only reads names,
torch-free, so the recipe language (``validate``), the card and the model families all read them alike.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["TIMM_PREFIX", "FamilyName", "family_name", "timm_name"]

FamilyName = Literal["torchvision", "timm", "factory"]
TIMM_PREFIX = "timm/"


def family_name(arch: str) -> FamilyName:
    """``timm`` for ``timm/convnext_tiny``, ``factory`` for ``package.module:factory``, else ``torchvision``."""
    if arch.startswith(TIMM_PREFIX):
        return "timm"
    if ":" in arch:
        return "factory"
    return "torchvision"


def timm_name(arch: str) -> str:
    """The timm model name of ``timm/<name>`` (``convnext_tiny``); the name is not checked."""
    return arch[len(TIMM_PREFIX):]
