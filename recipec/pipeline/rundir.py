"""Run directories: which directories a build may write into, and one build at a time in each.

**Ownership.** A build writes only into a directory recipec made. Its mark is the file
``.recipec-run``, created when a build first claims the directory. A build claims:

- a directory that does not exist yet, or is empty;
- a directory holding ``.recipec-run``;
- a run directory from before the mark: ``recipe.yaml`` and ``plan.json`` present, and
  every entry a name a build writes (so ``--resume`` of an older run still works).

Anything else is refused (:class:`~recipec.errors.RunDirectoryError`, exit 2): ``--out .``
in a project that has its own ``README.md`` and ``recipe.yaml`` must not overwrite them. An
empty ``--out`` is refused too (it would mean the working directory). A build that stops
before writing anything (bad input, exit 2) removes the mark and the directories it made.

**Starting over.** ``--overwrite`` (``build(..., overwrite=True)``) removes an earlier run from a
directory the build may claim (the rules above: never a directory recipec did not make), once
the build's inputs have been checked and just before it writes (:func:`clear_run_directory`): only
what a build writes (the names below, ``eval/``, ``tensorboard/``, ``checkpoints/``), never anything
else found there, and a symlink among them is unlinked, never followed. An input of the build
inside what would be removed (``source.checkpoint: RUN/checkpoints/best.pt``) is refused at the claim.

**Inputs.** No file a build writes (``recipe.yaml``, the exports, the card...) may be one of
its inputs (``source.checkpoint`` and its shards, ``card.template``): compared by device and
inode, so symlinks and hard links are caught.

**Lock.** The build holds an exclusive ``fcntl.flock`` on ``.recipec-run`` from before it
reads the directory until the card is written. The kernel releases it when the process
ends, however it ends (``kill -9`` included), so a crashed build never leaves a stale
lock; a second build of the same directory meanwhile fails at once (exit 2). Under
``--nproc``/torchrun only rank 0 writes: it alone claims and locks, and the ranks then agree
on the outcome (one all-reduce), so no rank waits for a partner that gave up.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipec._files import check_output
from recipec.errors import RunDirectoryError
from recipec.train import distributed

__all__ = ["MARKER", "claim_run_directory", "clear_run_directory", "run_directory_problem"]

MARKER = ".recipec-run"
# What a build writes at the top of a run directory; the mark, the lock and temporary files aside.
_WRITTEN_FILES = ("recipe.yaml", "plan.json", "plan.png", "metrics.jsonl", "model.safetensors",
                  "model.safetensors.index.json", "model.pt", "model.onnx", "curves.png", "README.md",
                  "skipped_images.txt", "tracking.json")
_WRITTEN_DIRS = ("checkpoints", "eval", "tensorboard", "hub")
_OURS = re.compile(r"model-\d{5}-of-\d{5}\.safetensors|\..+\.tmp")


def run_directory_problem(run: Path) -> str | None:
    """Why a build may not write into ``run`` (None when it may). Reads the directory, writes nothing."""
    if not run.exists():
        return None if not run.is_symlink() else f"{run}: is a broken symlink; choose another --out"
    if not run.is_dir():
        return f"{run}: is a file, not a directory; choose another --out"
    try:
        names = sorted(os.listdir(run))
    except OSError as exc:
        return f"{run}: cannot be read ({exc.strerror or exc}); choose another --out"
    if not names or MARKER in names:
        return None
    foreign = [n for n in names if n not in (*_WRITTEN_FILES, *_WRITTEN_DIRS) and not _OURS.fullmatch(n)]
    if not foreign and {"recipe.yaml", "plan.json"} <= set(names):
        return None  # a run from before the mark
    shown = ", ".join((foreign or names)[:5]) + (", ..." if len(foreign or names) > 5 else "")
    return (f"{run}: is not a recipec run directory: it holds files recipec did not write ({shown}), which a "
            f"build would overwrite or mix with its own; choose another --out (a new or empty directory)")


def clear_run_directory(run: Path) -> list[Path]:
    """Remove what earlier builds wrote into ``run`` (``--overwrite``); the mark, and anything else, stay.

    Call it only on a directory claimed with ``overwrite=True`` (so it is recipec's, and locked).
    ``checkpoints/`` goes first: from then on the directory no longer holds a run to resume.

    Returns:
        The paths removed.
    """
    removed = []
    for path in _earlier_run(run):
        if path.is_symlink() or not path.is_dir():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # a symlink itself: what it points to is not the run's
        else:
            shutil.rmtree(path)
        removed.append(path)
    return removed


def _earlier_run(run: Path) -> list[Path]:
    """What a build wrote at the top of ``run``, ``checkpoints/`` first."""
    try:
        names = os.listdir(run)
    except OSError:
        return []
    ours = [n for n in names if n in (*_WRITTEN_FILES, *_WRITTEN_DIRS) or _OURS.fullmatch(n)]
    return [run / n for n in sorted(ours, key=lambda n: (n != "checkpoints", n))]


@contextlib.contextmanager
def claim_run_directory(run: Path, *, world: Any = None, inputs: Iterable[str | os.PathLike[str] | None] = (),
                        overwrite: bool = False) -> Iterator[Path]:
    """Claim ``run`` for one build and hold its lock until the block ends.

    Args:
        run: the run directory (created when missing).
        world: the :class:`~recipec.train.distributed.World` of this process; ranks above 0
            do not claim (they write nothing) but learn whether rank 0 could.
        inputs: files the build reads (``source.checkpoint``, ``card.template``), which none
            of the files it writes may be.
        overwrite: the build will remove the earlier run (:func:`clear_run_directory`): no input
            may lie inside what that removes.

    Raises:
        RunDirectoryError: an empty path, a directory recipec did not make, a file the build
            would write that is one of its inputs, or another build holding the lock (exit 2).
    """
    if not os.fspath(run):
        raise RunDirectoryError("--out: the path is empty; give a run directory (default: runs/<name>)")
    writer = world is None or world.main
    error: RunDirectoryError | None = None
    held = None
    if writer:
        try:
            held = _claim(Path(run), inputs, overwrite=overwrite)
        except RunDirectoryError as exc:
            error = exc
    # every rank takes part in the sum (a collective), so it comes before the test of this rank's error
    if world is not None and world.distributed and distributed.all_sum([0.0 if error is None else 1.0], world)[0] and error is None:
        error = RunDirectoryError(f"{run}: rank 0 could not claim the run directory (see its error)")
    try:
        if error is not None:
            raise error
        yield Path(run)
    finally:
        if held is not None:
            held.release()


# Lock descriptors held by this process. A forked child (a DataLoader worker) closes its copies at once:
# flock belongs to the open file, so a worker outliving a killed build would otherwise keep the run locked.
_HELD_FDS: set[int] = set()


def _close_held_in_child() -> None:
    for fd in list(_HELD_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


@dataclass
class _Held:
    """A claimed run directory: the locked mark, and what the claim itself created."""

    fd: int
    run: Path
    marked: bool  # this claim created the mark
    made: list[Path]  # directories this claim created, deepest first

    def release(self) -> None:
        """Unlock. A build that wrote nothing (bad input, exit 2) leaves no trace: no mark, no new directory."""
        try:
            if self.marked and sorted(os.listdir(self.run)) == [MARKER]:
                (self.run / MARKER).unlink()
                for directory in self.made:
                    directory.rmdir()
        except OSError:
            pass  # something else appeared meanwhile: leave it
        finally:
            _HELD_FDS.discard(self.fd)
            os.close(self.fd)  # releases the lock


def _claim(run: Path, inputs: Iterable[str | os.PathLike[str] | None], *, overwrite: bool = False) -> _Held:
    problem = run_directory_problem(run)
    if problem is not None:
        raise RunDirectoryError(problem)
    made = []
    missing = run
    while not os.path.lexists(missing) and missing != missing.parent:
        made.append(missing)
        missing = missing.parent
    try:
        run.mkdir(parents=True, exist_ok=True)
        fd, marked = _open_marker(run / MARKER)
    except OSError as exc:
        raise RunDirectoryError(f"{run}: cannot be used as a run directory ({exc.strerror or exc}); "
                                "choose another --out") from None
    held = _Held(fd, run, marked, made)
    _HELD_FDS.add(fd)
    try:
        _lock(fd, run)
        written = [run / name for name in _WRITTEN_FILES] + [run / "checkpoints" / "last.pt"]
        listed = list(inputs)
        for file in written:
            check_output(file, inputs=listed, what="a build", error=RunDirectoryError)
        if overwrite:
            _check_kept(run, listed)
    except BaseException:
        held.release()
        raise
    return held


def _check_kept(run: Path, inputs: list[str | os.PathLike[str] | None]) -> None:
    """No input of the build lies inside what ``--overwrite`` removes (it is read after the removal)."""
    removed = [path.parent.resolve() / path.name if path.is_symlink() else path.resolve() for path in _earlier_run(run)]
    for name in inputs:
        if not name:
            continue
        where = Path(name).resolve()
        if any(where == path or path in where.parents for path in removed):
            raise RunDirectoryError(f"{name}: --overwrite would delete this input of the build with the earlier run in "
                                    f"{run}; copy it out of the run directory first (and point the recipe at the copy)")


def _open_marker(marker: Path) -> tuple[int, bool]:
    flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(marker, flags | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return os.open(marker, flags), False
    with contextlib.suppress(OSError):  # the mark's existence is what counts; its text is for people
        os.write(fd, b"recipec run directory: a build holds a lock on this file while it writes here\n")
    return fd, True


def _lock(fd: int, run: Path) -> None:
    try:
        import fcntl  # noqa: PLC0415 (POSIX only)
    except ImportError:  # pragma: no cover - not POSIX: no lock, as before
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunDirectoryError(f"{run}: another build is writing this run directory right now; wait for it to "
                                "finish, or choose another --out") from None
    except OSError:
        return  # a file system without locks (some network mounts): the build runs unlocked, as before
