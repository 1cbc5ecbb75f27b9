"""What the numbers are: reading and writing checkpoints, transferring and adapting tensors."""

from recipec.weights.adapt import adapt_input_channels, apply_rule
from recipec.weights.formats import Checkpoint, detect_format, load, load_state_dict, read_metadata, save, sha256
from recipec.weights.inspect import format_inspect, inspect_checkpoint
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
