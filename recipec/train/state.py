"""Training checkpoints: everything ``--resume`` needs, written atomically, resumed exactly.

A training state holds the model, optimizer and scheduler state dicts, the epoch and step,
the resolved recipe (torchtune does not keep it, #1968), the trainable groups, the metric
history, and every random number generator (torch, CUDA, Python, numpy). Restoring it and
training on gives bit-identical results to a run that never stopped.

The file holds only tensors and plain data, so ``torch.load(weights_only=True)`` reads it:
Python's and numpy's RNG states are stored as lists of ints (a numpy array in a checkpoint
breaks weights-only loading, pytorch #139302), and anything else is refused before writing,
naming the key. In torch 2.14 ``LambdaLR.state_dict()["lr_lambdas"]`` holds ``None`` for a
function or lambda and ``fn.__dict__`` for a callable object (``functools.partial`` included):
plain lambdas, like recipec's schedules, store nothing, and a callable object's attributes
must be plain data themselves.

Layout of ``checkpoints/``: ``epoch-0003.pt`` (3 completed epochs), the newest ``keep_last``
of them kept, and ``last.pt``, the state to resume from, never deleted.

Every state is verified before it is used: each record of the zip archive against the
CRC-32 written with it (a flipped bit anywhere is caught before a damaged tensor reaches a
model), then every field's type and range. :func:`latest_state` resumes from the newest
intact file, ``last.pt`` or an ``epoch-*.pt`` (a crash between the two leaves the epoch file
newer), and names the damaged ones it passed over.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import re
import shutil
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recipec._atomic import atomic_path
from recipec.card.provenance import now_utc, versions
from recipec.errors import CheckpointError, RecipeError, RunDirectoryError, UnsafeCheckpointError
from recipec.train._state_checks import damaged_fields, verify_archive

__all__ = ["FORMAT", "VERSION", "checkpoint_files", "checkpoint_paths", "latest_state", "load_state",
           "newest_checkpoint", "restore_state", "rotate_checkpoints", "save_state"]

FORMAT = "recipec-training-state"
VERSION = 1
LAST = "last.pt"
_EPOCH_FILE = re.compile(r"^epoch-(\d{4,})\.pt$")
_REQUIRED = ("model", "optimizer", "scheduler", "epoch", "step", "recipe", "trainable_groups", "history", "rng")
# Exactly what torch's weights-only unpickler accepts (subclasses such as IntEnum or numpy floats are not).
_SCALARS = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)
_CONTAINERS = (list, tuple, set)


def checkpoint_paths(directory: str | os.PathLike[str], epoch: int) -> tuple[Path, Path]:
    """``(directory/epoch-0003.pt, directory/last.pt)`` for a state after ``epoch`` completed epochs."""
    folder = Path(directory)
    return folder / f"epoch-{epoch:04d}.pt", folder / LAST


def save_state(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    step: int,
    recipe_yaml: str,
    trainable_groups: Sequence[str],
    history: list[dict[str, Any]],
    best: dict[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a complete training state atomically.

    When ``path`` is an epoch file (``epoch-0003.pt``, see :func:`checkpoint_paths`), ``last.pt``
    beside it is then atomically replaced by the same content (a hard link where the file system
    allows, else a copy). A crash at any point leaves the previous ``last.pt`` whole, and no
    partial file under either name.

    Args:
        path: the file to write (``.pt``).
        model: its ``state_dict()`` is saved (buffers included: BatchNorm statistics).
        optimizer: its ``state_dict()`` is saved.
        scheduler: an lr scheduler; its ``state_dict()`` is saved.
        epoch: number of *completed* epochs; resuming starts at this epoch index.
        step: optimizer steps taken so far.
        recipe_yaml: the resolved recipe, so a resume can check it is the same run.
        trainable_groups: the layer groups trainable at this point.
        history: one metrics dict per completed epoch.
        best: the best result so far (e.g. ``{"epoch": 2, "val_acc": 0.91}``), if tracked.
        extra: any other plain data the loop needs back (e.g. a ``GradScaler`` state dict).

    Returns:
        ``path``.

    Raises:
        CheckpointError: a value is not a tensor or plain data (a weights-only load could not
            read it back); nothing is written.
    """
    target = Path(path)
    state = {
        "format": FORMAT,
        "version": VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": int(epoch),
        "step": int(step),
        "recipe": recipe_yaml,
        "trainable_groups": list(trainable_groups),
        "history": list(history),
        "best": best,
        "rng": _rng_state(),
        "versions": versions(),
        "time": now_utc(),
        "extra": dict(extra or {}),
    }
    problems = _non_plain(state, ())
    if problems:
        raise CheckpointError([f"{target}: not saved: {p}" for p in problems])
    with atomic_path(target) as tmp:
        torch.save(state, tmp)
        _fsync(tmp)
    if _EPOCH_FILE.match(target.name):
        _refresh_last(target, target.parent / LAST)
    return target


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
    from recipec.weights._pickle import load_torch
    from recipec.weights.formats import detect_format

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
    epochs = sorted(((int(m.group(1)), p) for p in folder.iterdir() if (m := _EPOCH_FILE.match(p.name))), reverse=True)
    last = folder / LAST
    return ([last] if last.exists() else []) + [p for _, p in epochs]


def newest_checkpoint(directory: str | os.PathLike[str]) -> tuple[Path, int | None] | None:
    """The newest training state by file name alone (nothing is read): the highest ``epoch-*.pt`` and its
    epoch, else ``last.pt`` (epoch unknown: ``keep_last: 0``), else None."""
    files = checkpoint_files(directory)
    for path in files:
        if m := _EPOCH_FILE.match(path.name):
            return path, int(m.group(1))
    return (files[0], None) if files else None


def latest_state(directory: str | os.PathLike[str]) -> tuple[Path, dict[str, Any], list[str]]:
    """The newest intact training state of a ``checkpoints/`` directory, to resume from.

    ``last.pt`` is normally the newest; an ``epoch-*.pt`` with a higher epoch wins over it (a
    crash between writing the epoch file and refreshing ``last.pt``), and a damaged file (CRC
    mismatch, truncation, a damaged field, an epoch that is not its file name's) is passed over
    for the next older one.

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
        m = _EPOCH_FILE.match(path.name)
        if found is not None and (m is None or int(m.group(1)) <= found[1]["epoch"]):
            continue  # not newer than what we have
        try:
            state = load_state(path)
        except CheckpointError as exc:
            damaged += [p if p.startswith(str(path)) else f"{path}: {p}" for p in exc.problems]
            continue
        if m is not None and int(m.group(1)) != state["epoch"]:
            damaged.append(f"{path}: holds epoch {state['epoch']}, not the {int(m.group(1))} its name says")
            continue
        if found is None or state["epoch"] > found[1]["epoch"]:
            found = (path, state)
    if found is None:
        raise CheckpointError([*damaged, f"{folder}: no intact training state to resume from; start a new run "
                                         "(remove the run directory or choose another --out)"])
    return found[0], found[1], damaged


def restore_state(state: Mapping[str, Any], *, model: nn.Module, optimizer: torch.optim.Optimizer,
                  scheduler: Any, scaler: Any = None) -> None:
    """Put a loaded training state back: model (strictly), optimizer, scheduler, every RNG, and a GradScaler.

    ``scaler`` (a ``torch.amp.GradScaler`` of an fp16 run) gets the loss scale and growth
    tracker saved under ``state["extra"]["scaler"]`` (``save_state(extra={"scaler": ...})``).

    Build ``model``, ``optimizer`` and ``scheduler`` exactly as the saved run did (same recipe),
    restore, then continue from epoch ``state["epoch"]``. Optimizer state moves to the
    parameters' device. CUDA RNG states are restored for the devices present.

    Raises:
        CheckpointError: the state does not fit the objects (other keys or shapes, other
            parameter groups); the message names what differs.
    """
    saved = state["model"]
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(saved)), sorted(set(saved) - expected)
    problems = [f"training state lacks model key {k!r}" for k in missing[:20]]
    problems += [f"training state has model key {k!r} the model lacks" for k in unexpected[:20]]
    if problems:
        raise CheckpointError([*problems, "the training state is from a different model: resume with the run's own recipe"])
    try:
        model.load_state_dict(saved, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"training state does not fit the model: {' '.join(str(exc).split())}") from exc
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"training state does not fit the optimizer ({exc}): its parameter groups differ; "
                              "resume with the run's own recipe") from exc
    # LambdaLR.load_state_dict adopts the lists it is given; keep the loaded state untouched.
    scheduler.load_state_dict(copy.deepcopy(state["scheduler"]))
    if scaler is not None and isinstance(state.get("extra", {}).get("scaler"), dict):
        scaler.load_state_dict(state["extra"]["scaler"])
    try:
        _set_rng_state(state["rng"])
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise CheckpointError(f"training state: field 'rng' cannot be restored ({exc}); resume from an older "
                              "checkpoint or start a new run") from exc


def rotate_checkpoints(directory: str | os.PathLike[str], *, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` epoch files (``epoch-0003.pt``); ``last.pt`` always stays.

    Returns:
        The files deleted, oldest first.

    Raises:
        RecipeError: ``keep_last`` is negative (at ``train.keep_last``).
    """
    if keep_last < 0:
        raise RecipeError([(("train", "keep_last"), f"must be >= 0, got {keep_last}")])
    folder = Path(directory)
    if not folder.is_dir():
        return []
    epochs = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _EPOCH_FILE.match(p.name)) and p.is_file())
    doomed = [p for _, p in epochs[: max(len(epochs) - keep_last, 0)]]
    for p in doomed:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return doomed


def _refresh_last(source: Path, last: Path) -> None:
    with atomic_path(last) as tmp:
        tmp.unlink()  # os.link will not overwrite the placeholder atomic_path made
        try:
            os.link(source, tmp)  # no second copy of a large file; both names stay immutable
        except OSError:
            shutil.copyfile(source, tmp)
            _fsync(tmp)


def _fsync(path: Path) -> None:
    # os.replace without fsync may publish an empty file after a power loss on some file systems.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rng_state() -> dict[str, Any]:
    version, internal, gauss_next = random.getstate()
    rng: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # Untouched CUDA has nothing to save, and querying it would create a context on every GPU.
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
    }
    with contextlib.suppress(ImportError):
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
        rng["numpy"] = {"kind": str(kind), "keys": np.asarray(keys).tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                        "cached_gaussian": float(cached)}
    return rng


def _set_rng_state(rng: Mapping[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    cuda = rng.get("cuda") or []
    if cuda and torch.cuda.is_available():
        for index, cuda_state in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
    py = rng["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    if "numpy" in rng:
        with contextlib.suppress(ImportError):
            import numpy as np

            n = rng["numpy"]
            np.random.set_state((n["kind"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                                 n["cached_gaussian"]))


def _non_plain(value: Any, path: tuple[Any, ...]) -> list[str]:
    """Every value a weights-only load would refuse, by dotted path (at most 20)."""
    kind = type(value)
    if kind in (torch.Tensor, nn.Parameter, torch.Size) or kind in _SCALARS:
        return []
    where = ".".join(map(str, path)) or "(root)"
    problems: list[str] = []
    if kind in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in _SCALARS:
                problems.append(f"{where}: key {key!r} is a {type(key).__name__}; use str or int keys")
            problems += _non_plain(item, (*path, key))
    elif kind in _CONTAINERS:
        for index, item in enumerate(value):
            problems += _non_plain(item, (*path, index))
    else:
        hint = " (a numpy value: convert with .item() or .tolist())" if kind.__module__.startswith("numpy") else ""
        problems.append(f"{where}: a {kind.__module__}.{kind.__qualname__}{hint}; "
                        "a training state holds only tensors and plain data (str, numbers, lists, dicts)")
    return problems[:20]


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
