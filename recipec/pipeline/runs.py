"""The run directory of a build: where it is, what a killed build left in it, whether ``--resume`` may continue it."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import yaml

from recipec.errors import RunDirectoryError
from recipec.recipe._yaml import read_embedded
from recipec.recipe.load import dump_recipe, resolve_paths
from recipec.recipe.spec import Recipe

__all__ = ["check_resumable", "remove_temporaries", "run_directory"]


def run_directory(recipe: Recipe, out: str | Path | None = None) -> Path:
    """Where a build of ``recipe`` writes: ``out``, else ``runs/<name>``."""
    if out is not None and not str(out):  # Path("") would be the working directory
        raise RunDirectoryError("--out: the path is empty; give a run directory (default: runs/<name>)")
    return Path(out) if out is not None else Path("runs") / recipe.name


def check_resumable(recipe: Recipe, saved_yaml: str, run: Path | None = None) -> None:
    """A resumed run must be the same recipe; only train.epochs may grow."""
    # the saved text has paths relative to the run directory (where it was then, and is now)
    saved = read_embedded(saved_yaml, "the training state's recipe")
    saved = resolve_paths(saved, run) if run is not None else saved
    now = yaml.safe_load(dump_recipe(recipe))
    saved.get("train", {}).pop("epochs", None)
    now.get("train", {}).pop("epochs", None)
    for recipe_dict in (saved, now):  # where the metrics are also sent (log:) does not change the run
        recipe_dict.pop("log", None)
    if saved != now:
        changed = sorted(_diff(saved, now, ()))
        raise RunDirectoryError([
            f"--resume: {p} is not in the checkpoint's recipe: it was made by an earlier recipec, which had no such "
            "key (its behaviour there may differ); finish the run with that version, or start a new run"
            if _absent(saved, p) else
            f"--resume: the recipe changed since the checkpoint at {p or '(root)'}; "
            "resume with the recipe.yaml of the run, or start a new run" for p in changed[:10]])


_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # recipec._atomic's temporary files


def remove_temporaries(run: Path) -> list[Path]:
    """Delete the temporary files of atomic writes that a killed build left (``.model.safetensors.1a2b3c4d.tmp``)."""
    removed = []
    for folder in (run, run / "checkpoints"):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if _TEMPORARY.match(path.name) and path.is_file() and not path.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    return removed


def _diff(a: Any, b: Any, path: tuple[str, ...]) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in set(a) | set(b):
            out += _diff(a.get(key), b.get(key), (*path, str(key)))
        return out
    return [] if a == b else [".".join(path)]


def _absent(data: Any, dotted: str) -> bool:
    for key in dotted.split(".") if dotted else ():
        if not isinstance(data, dict) or key not in {str(k) for k in data}:
            return True
        data = next(v for k, v in data.items() if str(k) == key)
    return False
