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

The ``checkpoints/`` directory (file names, reading a state back and checking it, choosing the
one to resume from, rotation) is :mod:`recipec.train.checkpoints`; its names are re-exported here.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import shutil
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recipec._atomic import atomic_path
from recipec.provenance import now_utc, versions
from recipec.errors import CheckpointError
from recipec.model.heads import renamed_legacy_heads
from recipec.train.checkpoints import (
    EPOCH_FILE,
    FORMAT,
    LAST,
    NUMBERING,
    VERSION,
    checkpoint_files,
    checkpoint_paths,
    file_epoch,
    latest_state,
    load_state,
    newest_checkpoint,
    rotate_checkpoints,
)

__all__ = ["FORMAT", "NUMBERING", "VERSION", "RunPoint", "checkpoint_files", "checkpoint_paths", "file_epoch",
           "latest_state", "load_state", "newest_checkpoint", "restore_state", "rotate_checkpoints", "save_state"]

# Exactly what torch's weights-only unpickler accepts (subclasses such as IntEnum or numpy floats are not).
_SCALARS = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)
_CONTAINERS = (list, tuple, set)


@dataclass(frozen=True)
class RunPoint:
    """Where a run stands when its training state is saved.

    Attributes:
        epoch: number of *completed* epochs; resuming starts at this epoch index.
        step: optimizer steps taken so far.
        trainable_groups: the layer groups trainable at this point.
        history: one metrics dict per completed epoch.
        best: the best result so far (e.g. ``{"epoch": 2, "val_acc": 0.91}``), if tracked.
    """

    epoch: int
    step: int
    trainable_groups: Sequence[str]
    history: list[dict[str, Any]]
    best: dict[str, Any] | None = None


def save_state(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    point: RunPoint,
    recipe_yaml: str,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a complete training state atomically.

    When ``path`` is an epoch file (``epoch-0003.pt``: the state at the end of epoch 3, see
    :func:`checkpoint_paths`; the state records that numbering as ``file_numbering``), ``last.pt``
    beside it is then atomically replaced by the same content (a hard link where the file system
    allows, else a copy). A crash at any point leaves the previous ``last.pt`` whole, and no
    partial file under either name.

    Args:
        path: the file to write (``.pt``).
        model: its ``state_dict()`` is saved (buffers included: BatchNorm statistics).
        optimizer: its ``state_dict()`` is saved.
        scheduler: an lr scheduler; its ``state_dict()`` is saved.
        point: the epoch, step, trainable groups, history and best result (:class:`RunPoint`).
        recipe_yaml: the resolved recipe, so a resume can check it is the same run.
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
        "epoch": int(point.epoch),
        "file_numbering": NUMBERING,  # epoch-0003.pt: epoch 3 (0-based) done; see recipec.train.checkpoints
        "step": int(point.step),
        "recipe": recipe_yaml,
        "trainable_groups": list(point.trainable_groups),
        "history": list(point.history),
        "best": point.best,
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
    if EPOCH_FILE.match(target.name):
        _refresh_last(target, target.parent / LAST)
    return target


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
    saved = renamed_legacy_heads(state["model"], model)  # a run of an earlier version: fc.1.weight -> fc.weight
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
        import numpy as np  # noqa: PLC0415 (numpy is optional: its RNG is saved where it is installed)

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
            import numpy as np  # noqa: PLC0415 (numpy is optional: its RNG is restored where it is installed)

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
