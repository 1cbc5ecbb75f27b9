"""Checks of a training state before it is used: the file's CRC-32s, then every field.

``torch.load`` does not check the CRC-32 that its zip writer stores with every record, so one
flipped bit in a tensor loads as a wild weight (4.3e37) without a word; and a field of the
wrong type would otherwise surface as an internal error deep in ``restore_state``.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from recipec.errors import CheckpointError

__all__ = ["damaged_fields", "verify_archive"]


def verify_archive(file: Path) -> None:
    """Check every record of a zip-format state against its CRC-32 (a legacy file has none; torch checks it)."""
    try:
        if not zipfile.is_zipfile(file):
            return
        with zipfile.ZipFile(file) as archive:
            bad = archive.testzip()
    except FileNotFoundError:
        return  # load_torch says so in its own words
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{file}: damaged: its zip archive cannot be read ({exc}); resume from an older "
                              "checkpoint (checkpoints/epoch-*.pt) or start a new run") from exc
    if bad is not None:
        raise CheckpointError(f"{file}: damaged: record {bad!r} fails its CRC-32 check (the file changed after "
                              "it was written: a disk, copy or transfer fault); resume from an older checkpoint "
                              "(checkpoints/epoch-*.pt) or start a new run")


def damaged_fields(state: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(field, why)`` for every field of a loaded state that :func:`save_state` could not have written."""
    def whole(value: Any) -> bool:
        return type(value) is int and value >= 0

    def shown(value: Any) -> str:
        text = repr(value) if not isinstance(value, torch.Tensor) else f"a tensor of shape {list(value.shape)}"
        return text if len(text) <= 60 else text[:57] + "..."

    problems: list[tuple[str, str]] = []
    for key in ("epoch", "step"):
        if not whole(state[key]):
            problems.append((repr(key), f"must be a whole number >= 0, got {shown(state[key])}"))
    if not isinstance(state["recipe"], str) or not state["recipe"].strip():
        problems.append(("'recipe'", f"must be the resolved recipe as YAML text, got {shown(state['recipe'])}"))
    groups = state["trainable_groups"]
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        problems.append(("'trainable_groups'", f"must be a list of group names, got {shown(groups)}"))
    history = state["history"]
    if not isinstance(history, list) or not all(isinstance(m, dict) and whole(m.get("epoch")) for m in history):
        problems.append(("'history'", f"must be a list of per-epoch metrics with an 'epoch', got {shown(history)}"))
    model = state["model"]
    if not isinstance(model, dict) or not model or not all(isinstance(v, torch.Tensor) for v in model.values()):
        problems.append(("'model'", "must map parameter names to tensors"))
    optimizer = state["optimizer"]
    if not (isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
            and isinstance(optimizer.get("param_groups"), list)):
        problems.append(("'optimizer'", "must be an optimizer state dict ('state' and 'param_groups')"))
    if not isinstance(state["scheduler"], dict):
        problems.append(("'scheduler'", f"must be a scheduler state dict, got {shown(state['scheduler'])}"))
    for key, kind in (("extra", dict), ("best", (dict, type(None)))):
        if key in state and not isinstance(state[key], kind):
            problems.append((repr(key), f"must be a dict, got {shown(state[key])}"))
    problems += _damaged_rng(state["rng"])
    return problems


def _damaged_rng(rng: Any) -> list[tuple[str, str]]:
    if not isinstance(rng, dict):
        return [("'rng'", f"must hold the random number generator states, got {type(rng).__name__}")]
    problems = []
    expected = torch.get_rng_state()
    saved = rng.get("torch")
    if not (isinstance(saved, torch.Tensor) and saved.dtype == expected.dtype and saved.shape == expected.shape):
        what = f"a {saved.dtype} tensor of shape {list(saved.shape)}" if isinstance(saved, torch.Tensor) else repr(saved)
        problems.append(("'rng.torch'", f"must be a {expected.dtype} tensor of shape {list(expected.shape)}, got "
                                        f"{what[:60]}"))
    py = rng.get("python")
    if not (isinstance(py, dict) and isinstance(py.get("version"), int) and isinstance(py.get("state"), list)
            and len(py["state"]) == 625 and all(type(v) is int for v in py["state"])
            and (py.get("gauss_next") is None or isinstance(py.get("gauss_next"), float))):
        problems.append(("'rng.python'", "must be Python's random state (version, 625 ints, gauss_next)"))
    cuda = rng.get("cuda", [])
    if not isinstance(cuda, list) or not all(isinstance(t, torch.Tensor) and t.numel() for t in cuda):
        problems.append(("'rng.cuda'", "must be a list of CUDA generator states (tensors)"))
    n = rng.get("numpy")
    if n is not None and not (isinstance(n, dict) and isinstance(n.get("keys"), list) and len(n["keys"]) == 624
                              and all(type(v) is int for v in n["keys"]) and type(n.get("pos")) is int):
        problems.append(("'rng.numpy'", "must be numpy's legacy random state (624 keys and a position)"))
    return problems
