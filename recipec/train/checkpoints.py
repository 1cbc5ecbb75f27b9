"""The ``checkpoints/`` directory of a run: file names, reading a training state back, and
choosing the one to resume from.

Layout of ``checkpoints/``: ``epoch-0003.pt``, the state at the end of epoch 3 (0-based, as
``metrics.jsonl``, the plan and the card count epochs: the 4th epoch, 4 completed), the newest
``keep_last`` of them kept, and ``last.pt``, the state to resume from, never deleted.

Runs made before that numbering (recipec 0.1: ``epoch-0004.pt`` held 4 completed epochs) still
resume: a state records the numbering of its file name (:data:`NUMBERING`; absent in the old
ones), and what is resumed is always the epoch stored inside the file, never the one in its name.

Every state is verified before it is used: each record of the zip archive against the
CRC-32 written with it (a flipped bit anywhere is caught before a damaged tensor reaches a
model), then every field's type and range. :func:`latest_state` resumes from the newest
intact file, ``last.pt`` or an ``epoch-*.pt`` (a crash between the two leaves the epoch file
newer), and names the damaged ones it passed over.

Writing a state and putting it back into live objects is :mod:`recipec.train.state`, which
re-exports every name here.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from recipec.errors import CheckpointError, RecipeError, RunDirectoryError, UnsafeCheckpointError
from recipec.train.state_checks import damaged_fields, verify_archive
from recipec.weights._pickle import load_torch
from recipec.weights.raw import detect_format

__all__ = ["EPOCH_FILE", "FORMAT", "LAST", "NUMBERING", "VERSION", "checkpoint_files", "checkpoint_paths", "file_epoch",
           "latest_state", "load_state", "newest_checkpoint", "rotate_checkpoints"]

FORMAT = "recipec-training-state"
VERSION = 1
LAST = "last.pt"
EPOCH_FILE = re.compile(r"^epoch-(\d{4,})\.pt$")
# A state's "file_numbering": its epoch file is named by the 0-based index of the last epoch it completed.
# States without the key (recipec 0.1) were named by the number of completed epochs.
NUMBERING = "0-based"
_REQUIRED = ("model", "optimizer", "scheduler", "epoch", "step", "recipe", "trainable_groups", "history", "rng")


def checkpoint_paths(directory: str | os.PathLike[str], epoch: int) -> tuple[Path, Path]:
    """``(directory/epoch-0003.pt, directory/last.pt)`` for a state after ``epoch`` completed epochs (here 4:
    the file is named by the 0-based index of the last one, epoch 3, as metrics.jsonl counts it)."""
    if epoch < 1:
        raise ValueError(f"an epoch file holds at least one completed epoch, got {epoch}")
    folder = Path(directory)
    return folder / f"epoch-{epoch - 1:04d}.pt", folder / LAST


def file_epoch(state: Mapping[str, Any]) -> int:
    """The number the epoch-file name of ``state`` carries: the 0-based index of its last completed epoch,
    or, for a state written before that numbering (no ``file_numbering``), the count of completed epochs."""
    return int(state["epoch"]) - 1 if state.get("file_numbering") == NUMBERING else int(state["epoch"])


def load_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training state written by :func:`save_state` (always ``weights_only=True``, onto the CPU).

    The zip archive is checked record by record against its CRC-32 first (``torch.load`` does
    not: one flipped bit would load as a wild weight), then every field of the state.

    Raises:
        CheckpointError: the file is missing, empty, corrupt or truncated, fails its CRC-32
            check, has a damaged field (named), or is not a recipec training state (the message
            says what it is instead: a weights export, a bare state dict, another tool's
            checkpoint...).
    """
    file = Path(path)
    if file.is_dir():
        raise CheckpointError(f"{file}: is a directory; name the state file, e.g. {file / LAST}")
    fmt = detect_format(file)
    if fmt.startswith("safetensors"):
        raise CheckpointError(f"{file}: not a recipec training state but a safetensors file, which holds weights "
                              f"only; resume from the run's checkpoints/{LAST}")
    verify_archive(file)
    try:
        obj, _ = load_torch(file, mmap=False)
    except UnsafeCheckpointError as exc:
        found = re.search(r"refused to unpickle (.+?): not tensors", str(exc))
        named = f" ({found.group(1)})" if found else ""
        raise CheckpointError(f"{file}: not a recipec training state: it holds pickled Python objects{named}, "
                              "which a training state never does (a checkpoint from another tool?)") from exc
    what = _describe_foreign(obj)
    if what:
        raise CheckpointError(f"{file}: not a recipec training state: {what}")
    if obj["version"] > VERSION:
        raise CheckpointError(f"{file}: training state version {obj['version']} was written by a newer recipec; "
                              f"this one reads version {VERSION}: upgrade recipec to resume it")
    missing = [key for key in _REQUIRED if key not in obj]
    if missing:
        raise CheckpointError(f"{file}: incomplete training state: no {', '.join(map(repr, missing))}")
    damaged = damaged_fields(obj)
    if damaged:
        raise CheckpointError([f"{file}: damaged training state: field {field}: {why}; resume from an older "
                               "checkpoint (checkpoints/epoch-*.pt) or start a new run" for field, why in damaged])
    return obj


def checkpoint_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The training states in a ``checkpoints/`` directory, newest first: ``last.pt``, then epoch files by number."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    epochs = sorted(((int(m.group(1)), p) for p in folder.iterdir() if (m := EPOCH_FILE.match(p.name))), reverse=True)
    last = folder / LAST
    return ([last] if last.exists() else []) + [p for _, p in epochs]


def newest_checkpoint(directory: str | os.PathLike[str]) -> tuple[Path, int | None] | None:
    """The newest training state and its number of completed epochs (None when unknown), else None.

    The highest ``epoch-*.pt`` (else ``last.pt``: ``keep_last: 0``); its epoch is read from the
    file's pickle alone (tensors are mapped, not read), without the CRC check: for a message, not
    a resume.
    """
    files = checkpoint_files(directory)
    newest = next((path for path in files if EPOCH_FILE.match(path.name)), files[0] if files else None)
    if newest is None:
        return None
    try:
        state, _ = load_torch(newest, mmap=True)
        done = state["epoch"] if isinstance(state, Mapping) and type(state.get("epoch")) is int else None
    except (CheckpointError, OSError, RuntimeError, ValueError, EOFError):
        done = None  # damaged: a resume passes over it and says so
    return newest, done


def latest_state(directory: str | os.PathLike[str]) -> tuple[Path, dict[str, Any], list[str]]:
    """The newest intact training state of a ``checkpoints/`` directory, to resume from.

    ``last.pt`` is normally the newest; an ``epoch-*.pt`` with a higher epoch wins over it (a
    crash between writing the epoch file and refreshing ``last.pt``), and a damaged file (CRC
    mismatch, truncation, a damaged field, an epoch that is not its file name's) is passed over
    for the next older one. The epoch compared is the one stored in the file; a name only says
    which files may be newer (``epoch-0003.pt`` holds at most 4 completed epochs, in either numbering).

    Returns:
        ``(path, state, damaged)``: the file used, its loaded state, and one line per damaged
        file passed over (``"<file>: <why>"``), newest first.

    Raises:
        CheckpointError: there are training states but none is intact (each one's damage listed).
        RunDirectoryError: there is no training state at all.
    """
    folder = Path(directory)
    files = checkpoint_files(folder)
    if not files:
        raise RunDirectoryError(f"{folder / LAST} does not exist and no {folder / 'epoch-*.pt'} either: "
                                "nothing to resume; build without --resume to start the run")
    damaged: list[str] = []
    found: tuple[Path, dict[str, Any]] | None = None
    for path in files:
        m = EPOCH_FILE.match(path.name)
        if found is not None and (m is None or int(m.group(1)) + 1 <= found[1]["epoch"]):
            continue  # not newer than what we have
        try:
            state = load_state(path)
        except CheckpointError as exc:
            damaged += [p if p.startswith(str(path)) else f"{path}: {p}" for p in exc.problems]
            continue
        if m is not None and int(m.group(1)) != file_epoch(state):
            damaged.append(f"{path}: holds {_completed(state['epoch'])}, not what its name says (epoch "
                           f"{int(m.group(1))})")
            continue
        if found is None or state["epoch"] > found[1]["epoch"]:
            found = (path, state)
    if found is None:
        raise CheckpointError([*damaged, f"{folder}: no intact training state to resume from; start a new run "
                                         "(remove the run directory or choose another --out)"])
    return found[0], found[1], damaged


def rotate_checkpoints(directory: str | os.PathLike[str], *, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` epoch files (``epoch-0003.pt``); ``last.pt`` always stays.

    Newest by the number in the name: a run resumed from files of the old numbering continues at
    the number its last file has (its next file replaces that one: the old file's epoch is the
    one before it), so the order stays the order of the epochs.

    Returns:
        The files deleted, oldest first.

    Raises:
        RecipeError: ``keep_last`` is negative (at the field ``keep_last``).
    """
    if keep_last < 0:
        raise RecipeError([(("keep_last",), f"must be >= 0, got {keep_last}")])
    folder = Path(directory)
    if not folder.is_dir():
        return []
    epochs = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := EPOCH_FILE.match(p.name)) and p.is_file())
    doomed = [p for _, p in epochs[: max(len(epochs) - keep_last, 0)]]
    for p in doomed:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return doomed


def _completed(epochs: int) -> str:
    return f"{epochs} completed epoch{'' if epochs == 1 else 's'}"


def _describe_foreign(obj: Any) -> str:
    """What a torch file that is not a training state holds instead ("" when it is one)."""
    if not isinstance(obj, Mapping):
        return f"it holds a {type(obj).__name__}"
    if obj.get("format") == FORMAT:
        return "" if isinstance(obj.get("version"), int) else f"a damaged training state (version {obj.get('version')!r})"
    if "format" in obj:
        return f"its format is {obj['format']!r}"
    if "recipec_metadata" in obj and "state_dict" in obj:
        return (f"it is a recipec weights export (model.pt: weights only, no optimizer, scheduler or RNG state); "
                f"resume from the run's checkpoints/{LAST}")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return f"it is a bare state dict of {len(obj)} tensors (weights only)"
    keys = ", ".join(repr(k) for k in list(obj)[:10]) or "none"
    return f"it is a torch file with top-level keys {keys}{', ...' if len(obj) > 10 else ''} (another tool's checkpoint?)"
