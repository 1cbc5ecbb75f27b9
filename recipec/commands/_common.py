"""What the commands share with ``recipec.cli.main``: recipe loading, located errors, option help texts.

Error lines go through :func:`print_errors`, which knows the ranks of a distributed run:
under ``torchrun`` every rank reads the same input, so an input error (exit 2) is printed by
rank 0 alone; anything else a rank above 0 hits (a failed run, an internal error, an
interrupt) may be that rank's alone and is printed with ``[rank N] `` in front.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from recipec._terminal import escape
from recipec.errors import RecipecError, RecipecWarning

if TYPE_CHECKING:
    from recipec.recipe.spec import Recipe

SET_HELP = "Override a recipe value: dotted.path=YAML value (repeatable), e.g. optimizer.lr=3e-4."
TRUST_HELP = ("A custom factory (model.arch) that the file's own recipe may import and call to rebuild the "
              "model (repeatable, exact name); any other is refused. torchvision models need none.")


class Located(Exception):
    """A RecipecError whose problems were given their recipe file locations."""

    def __init__(self, error: RecipecError, lines: list[str]) -> None:
        self.error = error
        self.lines = lines
        super().__init__("\n".join(lines))


def locate(error: RecipecError, recipe: Recipe | None) -> Located:
    from recipec.recipe.load import recipe_location

    lines = []
    for path, problem in zip(error.paths, error.problems):
        where = recipe_location(recipe, path) if recipe is not None and path is not None else None
        lines.append(f"{where}: {problem}" if where else problem)
    return Located(error, lines)


class Interrupted(Exception):
    """Ctrl-C during a build, with the lines that say what was kept and how to resume.

    Not a KeyboardInterrupt: click would turn that into a bare ``Abort`` and print a blank line.
    """

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("\n".join(lines))


def load(path: str, overrides: Sequence[str] = ()) -> Recipe:
    from recipec.recipe.load import load_recipe

    return load_recipe(path, overrides)


def other_rank() -> int | None:
    """This process's rank when it is one of several and not rank 0 (torchrun's ``RANK``, ``WORLD_SIZE``), else None."""
    try:
        rank, size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:  # not torchrun's: this process speaks for itself
        return None
    return rank if size > 1 and rank > 0 else None


def rank_prefix(code: int, *, unexpected: bool = False) -> str | None:
    """What goes before this process's error lines for exit ``code``; None: print nothing.

    Ranks above 0 of ``--nproc`` (``RECIPEC_QUIET_RANK=1``) leave the reports to rank 0, but for
    ``unexpected`` errors (a bug, the file system). Ranks above 0 of any distributed run keep
    quiet about input errors (exit 2: every rank read the same input) and name themselves on
    the rest, which may be theirs alone.
    """
    if os.environ.get("RECIPEC_QUIET_RANK") == "1" and not unexpected:
        return None
    rank = other_rank()
    if rank is None:
        return ""
    return None if code == 2 else f"[rank {rank}] "


def print_errors(lines: Sequence[str], code: int = 2, *, unexpected: bool = False) -> None:
    """One ``error:`` line per problem on stderr, for a command that exits with ``code`` (see :func:`rank_prefix`)."""
    prefix = rank_prefix(code, unexpected=unexpected)
    if prefix is None:
        return
    for line in lines:
        click.echo(f"{prefix}error: {escape(line, newlines=False)}", err=True)  # keys quoted from files


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
    """``warnings.showwarning`` of the command line: every warning on stderr in recipec's words, never a source line.

    recipec's own (:class:`~recipec.errors.RecipecWarning`) read ``warning: <text>``; a library's
    read ``warning: <library>: <first line of its text>``, without the path into site-packages
    and the quoted source line Python adds. A library's DeprecationWarning or FutureWarning
    concerns recipec's code, not the user's input, and is not shown (the test suite sees them).
    Ranks above 0 of a distributed run leave recipec's warnings to rank 0 (they read the same files).
    """
    text = str(message).strip()
    if issubclass(category, RecipecWarning):
        if other_rank() is not None:
            return
        shown = f"warning: {text}"
    else:
        library = _library(filename)
        if library and issubclass(category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)):
            return
        shown = f"warning: {library or category.__name__}: {text.splitlines()[0] if text else category.__name__}"
    click.echo(escape(shown, newlines=False), err=True)  # text that may quote keys from files


def _library(filename: str) -> str:
    """The installed package a warning came from (``torch``, ``PIL``, ...), or "" for other code."""
    parts = Path(filename).parts
    for i, part in enumerate(parts[:-1]):
        if part in ("site-packages", "dist-packages"):
            return Path(parts[i + 1]).stem
    return ""
