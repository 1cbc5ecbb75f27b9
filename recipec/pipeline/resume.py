"""Resuming a run: which training state to continue from, and whether it may continue.

A resume continues exactly the run it resumes or is refused (exit 2, saying why). The
training state is the newest intact one (:func:`~recipec.train.state.latest_state`); besides
the recipe text (compared by ``build``), a state records the data split's fingerprint and the
source checkpoint's sha256 (:func:`run_identity`), and a resume onto other data or another
source file is refused. ``train.epochs`` may change only where the run stays reproducible
from its recipe (:func:`check_same_run`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from recipec.provenance import file_digest
from recipec.errors import RecipecError, RunDirectoryError, warn
from recipec.recipe._yaml import read_embedded
from recipec.recipe.spec import Recipe
from recipec.compiler.fit_config import lr_shape
from recipec.train.schedule import lr_factor
from recipec.train.state import latest_state

__all__ = ["check_same_run", "continue_schedule", "resume_state", "run_identity", "saved_epochs"]


def resume_state(checkpoints: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """The newest intact training state of a run (verified), saying which damaged files were passed over.

    Raises:
        RunDirectoryError: there is no training state at all.
        CheckpointError: none is intact (each damaged one named).
    """
    try:
        path, state, damaged = latest_state(checkpoints)
    except RunDirectoryError as exc:
        raise RunDirectoryError([f"--resume: {p}" for p in exc.problems]) from exc
    for line in damaged:
        warn(f"damaged checkpoint passed over: {line}")
    if damaged or path.name != "last.pt":
        say(f"resuming from {path} ({_epochs(state['epoch'])} done), the newest intact checkpoint")
    return state


def run_identity(recipe: Recipe, data: Any) -> dict[str, Any]:
    """What a training state records of the run's inputs beyond the recipe text (``save_state(extra=...)``):
    the data split's fingerprint (``data.info["fingerprint"]``) and the source checkpoint's sha256."""
    source = recipe.source.checkpoint if recipe.source is not None else None
    digest = file_digest(source) if source and Path(source).is_file() else None
    return {"data_fingerprint": data.info.get("fingerprint"), "source_sha256": digest}


def saved_epochs(state: dict[str, Any]) -> int | None:
    """The ``train.epochs`` of the recipe a training state was saved under (None when unreadable)."""
    try:
        saved = read_embedded(state["recipe"], "the training state's recipe")
    except RecipecError:
        return None
    epochs = saved.get("train", {}).get("epochs") if isinstance(saved, dict) else None
    return epochs if type(epochs) is int else None


def check_same_run(recipe: Recipe, state: dict[str, Any], identity: dict[str, Any], steps: int,
                   say: Callable[[str], None]) -> None:
    """Refuse a resume onto other data or another source file, or to epochs it cannot honestly reach.

    ``train.epochs`` may change only where the epochs already trained ran at the same learning
    rates as in a run of the new length (schedulers ``none`` and ``step``; not ``cosine`` or
    ``onecycle``, whose curve is stretched over the total): the run then is exactly a run
    started with the new ``train.epochs``, and its ``recipe.yaml`` reproduces it.

    Raises:
        RunDirectoryError: one located problem per difference (``train.epochs``,
            ``source.checkpoint``, ``data.root``).
    """
    saved = state.get("extra") or {}
    done, epochs, before = int(state["epoch"]), recipe.train.epochs, saved_epochs(state)
    problems: list[Any] = []
    if done > epochs:
        problems.append((("train", "epochs"), f"is {epochs}, but the run to resume already trained {done} epochs; "
                                              f"resume with train.epochs >= {done}, or start a new run to train fewer"))
    elif before is not None and before != epochs:
        differs = _schedule_differs(recipe, before, epochs, steps, done)
        if differs:
            s, a, b = differs
            problems.append((("train", "epochs"), (
                f"changed from {before} to {epochs}, but the {recipe.optimizer.scheduler.name} lr schedule depends "
                f"on the number of epochs: the {_epochs(done)} already trained followed the {before}-epoch curve "
                f"(lr factor {a:.4g} at step {s}, where a {epochs}-epoch run has {b:.4g}), so recipe.yaml could "
                f"not reproduce the run; resume with train.epochs={before}, or start a new run with {epochs} "
                "(the none and step schedules can grow)")))
        else:
            say(f"train.epochs changed from {before} to {epochs}: the {_epochs(done)} trained ran at the lrs of a "
                f"{epochs}-epoch run, so the run continues exactly as if started with train.epochs={epochs}")
    recorded, now = saved.get("source_sha256"), identity["source_sha256"]
    if "source_sha256" in saved and recorded != now and recipe.source is not None:
        problems.append((("source", "checkpoint"), (
            f"{recipe.source.checkpoint} has sha256 {now}, but the run was trained from a file with sha256 "
            f"{recorded}: the source checkpoint was replaced since the run started; put the original file back, "
            "or start a new run")))
    recorded, now = saved.get("data_fingerprint"), identity["data_fingerprint"]
    if "data_fingerprint" in saved and recorded != now:
        where = ("data", "root") if recipe.data.root else ("data", "dataset")
        problems.append((where, (
            f"the data changed since the run started (split fingerprint {str(recorded)[:12]}, now {str(now)[:12]}): "
            "images were added, removed, renamed or resized, so the train/val split would change mid-run and training "
            "images could land in validation; restore the data as it was, or start a new run")))
    if problems:
        raise RunDirectoryError(problems)


def _epochs(n: int) -> str:
    return f"{n} epoch{'' if n == 1 else 's'}"


def _schedule_differs(recipe: Recipe, before: int, epochs: int, steps: int, done: int) -> tuple[int, float, float] | None:
    """The first optimizer step up to the next one (``done`` epochs in) whose lr factor differs between a
    ``before``-epoch and an ``epochs``-epoch run, with both factors; None when there is none."""
    per_epoch = max(1, steps)
    old = lr_shape(recipe.optimizer.scheduler, before, steps_per_epoch=per_epoch)
    new = lr_shape(recipe.optimizer.scheduler, epochs, steps_per_epoch=per_epoch)
    for s in range(done * per_epoch + 1):  # + 1: the first step after the resume runs at the lr set before it
        a, b = lr_factor(s / (before * per_epoch), old), lr_factor(s / (epochs * per_epoch), new)
        if not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15):
            return s, a, b
    return None


def continue_schedule(optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """After a resume with another ``train.epochs``: the current lr from the new schedule, not the saved one."""
    lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs
