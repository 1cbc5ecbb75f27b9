"""What the numbers are: reading and writing checkpoints, transferring and adapting tensors.

The names below are imported when first used, so that :mod:`recipec.weights.raw` (``recipec
convert`` without torch) imports no torch through this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recipec.weights.adapt import adapt_input_channels, apply_rule
    from recipec.weights.formats import Checkpoint, load, load_state_dict, read_metadata, save
    from recipec.weights.inspect import format_inspect, inspect_checkpoint
    from recipec.weights.raw import detect_format, sha256
    from recipec.weights.transfer import LoadReport, TransferRules, apply_transfer, map_keys

__all__ = [
    "Checkpoint",
    "LoadReport",
    "TransferRules",
    "adapt_input_channels",
    "apply_rule",
    "apply_transfer",
    "detect_format",
    "format_inspect",
    "inspect_checkpoint",
    "load",
    "load_state_dict",
    "map_keys",
    "read_metadata",
    "save",
    "sha256",
]

_LAZY = {
    "adapt_input_channels": "adapt", "apply_rule": "adapt",
    "Checkpoint": "formats", "load": "formats", "load_state_dict": "formats", "read_metadata": "formats", "save": "formats",
    "format_inspect": "inspect", "inspect_checkpoint": "inspect",
    "detect_format": "raw", "sha256": "raw",
    "LoadReport": "transfer", "TransferRules": "transfer", "apply_transfer": "transfer", "map_keys": "transfer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"recipec.weights.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'recipec.weights' has no attribute {name!r}")
