"""Sharded torch checkpoints: a ``pytorch_model.bin.index.json`` and the ``.bin`` shards it names.

The Hugging Face layout of ``save_pretrained`` before safetensors, and of
``huggingface_hub.save_torch_state_dict(safe_serialization=False)``: the index's ``weight_map``
names each tensor's shard, as a safetensors index does, and each shard is a torch file holding a
flat state dict. Every shard is read as any torch file is (weights only, see ``_pickle.py``), and
the index is checked against what the shards hold (``_safetensors.sharded_layout``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from recipec.weights._pickle import load_torch
from recipec.weights._safetensors import sharded_layout
from recipec.weights._state import find_state_dict

__all__ = ["load"]


def load(index: Path, *, allow_globals: Sequence[str] = (), mmap: bool = True,
         ) -> tuple[dict[str, torch.Tensor], dict[str, str], list[Path]]:
    """Read a sharded torch checkpoint: its tensors, the index's metadata, and the files read (index first).

    Raises:
        UnsafeCheckpointError: a shard needs a global that is not allowed.
        CheckpointError: the index is not one, a shard is missing, unreadable, or holds other
            tensors than the index maps to it.
    """
    loaded: dict[Path, dict[str, torch.Tensor]] = {}

    def names(shard: Path) -> tuple[list[str], dict[str, str]]:
        obj, _ = load_torch(shard, allow_globals=allow_globals, mmap=mmap, namespaces=True)
        loaded[shard] = find_state_dict(obj, "auto", shard, torch.Tensor)[0]
        return list(loaded[shard]), {}

    shards, metadata = sharded_layout(index, read=names)
    state: dict[str, torch.Tensor] = {}
    for shard, keys in shards.items():
        state.update((key, loaded[shard][key]) for key in keys)
    return state, metadata, [index, *shards]
