"""Recipe files -> a validated :class:`Recipe`: ``extends``, ``--set`` overrides, located errors.

Every key and value keeps where it was written (a :class:`SourceMap`) through ``extends``
and overrides, so each problem reads ``file:line:col: dotted.path: message`` and points at
the text to fix. Relative paths in a recipe are made absolute against the file that wrote
them, so nothing downstream depends on the working directory.

This module never imports torch.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from recipec._files import check_regular
from recipec.errors import RecipeError, format_path
from recipec.recipe._fields import SCHEMA_KEY_RULE
from recipec.recipe._problems import located_problems, show_value
from recipec.recipe._yaml import (
    MAX_RECIPE_BYTES,
    Position,
    RecipePath,
    SourceMap,
    dump_yaml,
    iter_paths,
    parse_value,
    read_recipe_file,
)
from recipec.recipe.paths import path_problems
from recipec.recipe.spec import SCHEMA_ID, Recipe

__all__ = ["PATH_FIELDS", "Position", "SourceMap", "dump_recipe", "load_recipe", "load_recipe_data", "recipe_location",
           "relative_paths", "resolve_paths"]

# Values that are file system paths; relative ones are resolved against the file that wrote them.
PATH_FIELDS: tuple[RecipePath, ...] = (("source", "checkpoint"), ("source", "recipe"), ("data", "root"),
                                       ("card", "template"))
_SOURCES = "_recipec_sources"  # the SourceMap rides on the frozen Recipe, outside its fields
_TAGGED: dict[RecipePath, str] = {("optimizer", "scheduler"): "name"}  # discriminated unions: path -> tag field
# A --set is one value on a command line: its key is a path into the recipe (the deepest real one,
# model.kwargs or an augmentation's options, is under ten levels) and its value a piece of YAML.
MAX_SET_DEPTH = 32
MAX_SET_KEY = 1_000  # characters
MAX_SET_VALUE = 1 << 20  # characters: a list of classes, a kwargs mapping; a recipe file is the place for more
_MAX_BLAMED = 32  # overrides tried one by one to find which caused a problem (more: the problems as located)
_INDEX = re.compile(r"[0-9]+")
_INT_KEY = re.compile(r"-?[0-9]+")


def load_recipe(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Recipe:
    """Read, resolve and validate a recipe file.

    Args:
        path: a YAML file, or JSON when it ends in ``.json``.
        overrides: ``KEY=VALUE`` strings applied after ``extends``, as by ``--set``
            (see :func:`load_recipe_data` for the rules).

    Returns:
        The validated recipe; :func:`recipe_location` finds where each of its values was written.

    Raises:
        RecipeError: with one ``file:line:col: dotted.path: message`` problem for every
            mistake found, or the one file-level problem (missing file, YAML syntax, ...).

    Example:
        >>> recipe = load_recipe("recipes/quickstart.yaml", ["optimizer.lr=3e-4"])
        >>> recipe.optimizer.lr
        0.0003
    """
    data, sources = load_recipe_data(path, overrides)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_blame_overrides(path, overrides, located_problems(exc, data, sources))) from None
    object.__setattr__(recipe, _SOURCES, sources)  # frozen models still allow a non-field attribute this way
    return recipe


def _blame_overrides(path: str | os.PathLike[str], overrides: Sequence[str], problems: list[str]) -> list[str]:
    """Point problems that only an override causes at that ``--set``, not at a line of the file.

    ``--set train.epochs=1`` makes ``freeze.unfreeze.2`` (written in the file) wrong: the
    problem is reported as ``--set train.epochs=1: freeze.unfreeze.2: ...``, since the file
    alone is valid there. An override is to blame when leaving it out makes the problem go away.
    """
    items = [overrides] if isinstance(overrides, str) else list(overrides)
    if not items or len(items) > _MAX_BLAMED:  # each one costs a reload of the recipe: bounded work
        return problems
    blamed: dict[str, list[str]] = {}
    for i, item in enumerate(items):
        try:
            data, _ = load_recipe_data(path, [*items[:i], *items[i + 1:]])
            Recipe.model_validate(data)
            without: set[str] = set()
        except ValidationError as exc:
            without = set(located_problems(exc, data, SourceMap()))  # unlocated texts
        except RecipeError:
            continue  # the other overrides do not stand alone: no verdict for this one
        for line in problems:
            if line.startswith("--set ") or any(line.endswith(": " + text) or line == text for text in without):
                continue
            blamed.setdefault(line, []).append(item)
    out = []
    for line in problems:
        if line not in blamed:
            out.append(line)
            continue
        where, text = _split_location(line)
        written = f" (written at {where})" if where else ""
        out.append(f"{' '.join('--set ' + item for item in blamed[line])}: {text}{written}")
    return out


def _split_location(line: str) -> tuple[str | None, str]:
    """``"file:3:7: a.b: msg"`` -> ``("file:3:7", "a.b: msg")``; a line without a location -> ``(None, line)``."""
    match = re.match(r"^(.*?:[0-9]+:[0-9]+): (.*)$", line, flags=re.S)
    return (match.group(1), match.group(2)) if match else (None, line)


def load_recipe_data(path: str | os.PathLike[str],
                     overrides: Sequence[str] = ()) -> tuple[dict[str | int, Any], SourceMap]:
    """The resolved raw data of a recipe and where each value came from, before validation.

    ``extends: other.yaml`` (relative to the file that says it) is merged under the file:
    mappings merge key by key, anything else (lists included) is replaced by the child's
    value, and so is a mapping when the child's is empty (``unfreeze: {}`` clears it) or
    names another scheduler (``scheduler: {name: onecycle}`` drops cosine's options).
    Relative paths in :data:`PATH_FIELDS` become absolute against the directory of the
    file that wrote them (the working directory for overrides). A file's ``$schema`` (the JSON
    Schema it names for editors) is dropped. ``name`` defaults to the
    stem of ``path`` when no file and no override sets it.

    Each override is ``KEY=VALUE``: KEY is dotted, VALUE is YAML (``3e-4``, ``[layer3]``,
    ``null``; empty means null). Walking KEY, a part is a list index inside a list (it
    must exist); inside a mapping a part made of digits (``-`` allowed) is an int key,
    unless the mapping already has that text as a key. So ``freeze.unfreeze.4=[layer3]``
    sets epoch 4, ``groups.0.name=stem`` renames the first group. Missing or null
    mappings on the way are created.

    Args:
        path: the recipe file.
        overrides: ``KEY=VALUE`` strings, applied in order.

    Returns:
        ``(data, sources)``: plain data without ``extends``, and its :class:`SourceMap`.

    Raises:
        RecipeError: a file cannot be read or parsed, ``extends`` is missing or cyclic,
            or an override is malformed.
    """
    file = os.fsdecode(path)
    data, sources = _load_chain(file, [], None)
    for item in [overrides] if isinstance(overrides, str) else overrides:
        _apply_override(data, sources, item)
    data.setdefault("name", Path(file).stem)
    return data, sources


def recipe_location(recipe: Recipe, path: Sequence[str | int]) -> str | None:
    """``file:line:col`` where the value at ``path`` of a loaded recipe was written.

    Best effort: a value that was not written (a default) gets the place of its nearest
    written parent; a recipe not made by :func:`load_recipe` gets None.

    Args:
        recipe: a recipe returned by :func:`load_recipe`.
        path: keys and list indices, e.g. ``("source", "exclude", 0)``.

    Returns:
        ``file:line:col``, or ``--set KEY=VALUE`` for a value an override wrote, or None.

    Example:
        >>> recipe_location(recipe, ("optimizer", "lr"))
        'recipes/quickstart.yaml:24:7'
    """
    sources = vars(recipe).get(_SOURCES)
    where = sources.locate(tuple(path)) if isinstance(sources, SourceMap) else None
    return str(where) if where is not None else None


def dump_recipe(recipe: Recipe, *, relative_to: str | os.PathLike[str] | None = None) -> str:
    """The resolved recipe as YAML text: every field, defaults included, and no ``extends``.

    Args:
        recipe: any recipe.
        relative_to: the directory the text will live in (a run directory). Paths of
            :data:`PATH_FIELDS` that share a directory with it other than the file system's root
            are written relative to it (``../../data/flowers``), so a run directory copied or
            moved together with its data rebuilds elsewhere; the others stay absolute.

    Returns:
        YAML that :func:`load_recipe` reads back into an equal recipe: absolute paths as they
        are, relative ones against the directory of the file (``relative_to``).
    """
    data = _plain(recipe.model_dump(mode="python", exclude={"extends"}))
    if relative_to is not None:
        relative_paths(data, relative_to)
    return dump_yaml(data)


def relative_paths(data: dict[str | int, Any], directory: str | os.PathLike[str]) -> dict[str | int, Any]:
    """Write the absolute :data:`PATH_FIELDS` of raw recipe data relative to ``directory``, in place.

    Only paths that share a directory with ``directory`` other than the file system's root:
    ``/data/imagenet`` stays absolute for a run under ``/home``.
    """
    base = os.path.abspath(directory)
    for *parents, last in PATH_FIELDS:
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        value = node.get(last) if isinstance(node, dict) else None
        if isinstance(value, str) and os.path.isabs(value):
            common = os.path.commonpath([value, base])
            if os.path.dirname(common) != common:  # not the root: they belong to one tree
                node[last] = os.path.relpath(value, base)
    return data


def resolve_paths(data: dict[str | int, Any], directory: str | os.PathLike[str]) -> dict[str | int, Any]:
    """Make the relative :data:`PATH_FIELDS` of raw recipe data absolute against ``directory``, in place.

    For recipe text that did not come from a file :func:`load_recipe` reads: the ``recipe.yaml``
    inside a training state, or the recipe an export carries (relative to the export's directory).
    """
    if isinstance(data, dict):
        _absolutize(data, PATH_FIELDS, os.path.abspath(directory))
    return data


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- extends


def _load_chain(file: str, chain: list[tuple[str, str]], at: Position | None) -> tuple[dict[str | int, Any], SourceMap]:
    """Read ``file`` and, below it, what it extends. ``chain``: (real path, shown path) of the files above."""
    real = os.path.realpath(file)
    if any(real == seen for seen, _ in chain):
        cycle = " -> ".join([*(shown for _, shown in chain), file])
        raise RecipeError(f"{at}: extends: cycle {cycle}")
    if at is not None and not os.path.exists(file):
        raise RecipeError(f"{at}: extends: no such file {file}")
    if at is not None:  # a base that is a FIFO, a device or huge: say which extends named it
        try:
            check_regular(file, what="recipe", error=RecipeError, max_bytes=MAX_RECIPE_BYTES)
        except RecipeError as exc:
            raise RecipeError(f"{at}: extends: {exc.problems[0]}") from None
    data, sources = read_recipe_file(file)
    _drop_schema_key(data, sources)
    _absolutize(data, PATH_FIELDS, os.path.dirname(os.path.abspath(file)))
    parent = data.pop("extends", None)
    where = sources.locate(("extends",))
    sources.drop(("extends",))
    if parent is None:
        return data, sources
    if not isinstance(parent, str) or not parent.strip():
        raise RecipeError(f"{where}: extends: must be the path of a recipe file, got {show_value(parent)}")
    parent_file = os.path.normpath(os.path.join(os.path.dirname(file), os.path.expanduser(parent)))
    if not os.path.exists(parent_file):  # report the file's other missing paths with it, not one per try
        others = [f"{sources.locate(p)}: {format_path(p)}: {text}" for p, text in path_problems(data)]  # type: ignore[misc]
        raise RecipeError([f"{where}: extends: no such file {parent_file}", *others])
    base, base_sources = _load_chain(parent_file, [*chain, (real, file)], where)
    # An empty mapping clears a section, but a file that is only `extends: base.yaml` is the base.
    merged = _merge(base, data) if data else base
    return merged, _merge_sources(merged, base_sources, sources)


def _drop_schema_key(data: dict[str | int, Any], sources: SourceMap) -> None:
    """``$schema`` names the JSON Schema a file follows, for editors; it is no part of the recipe."""
    if "$schema" not in data:
        return
    value = data.pop("$schema")
    if not isinstance(value, str) or not value.strip():
        raise RecipeError(f"{sources.locate(('$schema',))}: $schema: {SCHEMA_KEY_RULE}, e.g. {SCHEMA_ID}, "
                          f"got {show_value(value)}")
    sources.drop(("$schema",))


def _merge(base: Any, child: Any, path: RecipePath = ()) -> Any:
    if isinstance(base, dict) and isinstance(child, dict) and child and not _retagged(base, child, path):
        merged = dict(base)
        for key, value in child.items():
            merged[key] = _merge(base[key], value, (*path, key)) if key in base else value
        return merged
    return child


def _retagged(base: dict[str | int, Any], child: dict[str | int, Any], path: RecipePath) -> bool:
    # Another scheduler kind has other options: merging cosine's warmup_epochs into onecycle is an error.
    tag = _TAGGED.get(path)
    return tag is not None and tag in child and child[tag] != base.get(tag)


def _merge_sources(merged: Any, base: SourceMap, child: SourceMap) -> SourceMap:
    # Every value the child wrote has a position in the child's map; the rest came from the base.
    out = SourceMap()
    for path, _ in iter_paths(merged):
        for mine, theirs, table in ((child.values, base.values, out.values), (child.keys, base.keys, out.keys)):
            where = mine.get(path) or theirs.get(path)
            if where is not None:
                table[path] = where
    return out


def _absolutize(data: dict[str | int, Any], fields: Sequence[RecipePath], directory: str) -> None:
    for *parents, last in fields:
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        value = node.get(last) if isinstance(node, dict) else None
        if isinstance(value, str) and value.strip():
            value = os.path.expanduser(value)
            node[last] = value if os.path.isabs(value) else os.path.normpath(os.path.join(directory, value))


# --------------------------------------------------------------------------- overrides


def _apply_override(data: dict[str | int, Any], sources: SourceMap, item: str) -> None:
    label = f"--set {item}"
    key, sep, text = str(item).partition("=")
    key = key.strip()
    if len(key) > MAX_SET_KEY or len(text) > MAX_SET_VALUE:  # before the label quotes it in full
        what, size, most = ("key", len(key), MAX_SET_KEY) if len(key) > MAX_SET_KEY else ("value", len(text),
                                                                                        MAX_SET_VALUE)
        raise RecipeError(f"--set {key[:40]}...: the {what} has {size:,} characters; a --set {what} may have at most "
                          f"{most:,} (write long values in a recipe file)")
    if not sep or not key:
        raise RecipeError(f"{label}: expected KEY=VALUE with a dotted KEY, e.g. --set optimizer.lr=3e-4")
    parts = key.split(".")
    if len(parts) > MAX_SET_DEPTH:
        raise RecipeError(f"--set {key[:40]}...: {len(parts):,} levels deep; a recipe key has at most {MAX_SET_DEPTH}")
    if "" in parts:
        raise RecipeError(f"{label}: {key!r} has an empty part; write dotted keys such as freeze.unfreeze.3")
    if parts[0] == "extends":
        raise RecipeError(f"{label}: extends cannot be overridden; write a recipe that extends the other one")
    value = parse_value(text, label)
    where = Position(label)
    node: Any = data
    path: list[str | int] = []
    for i, part in enumerate(parts):
        if isinstance(node, list):
            if not node:
                raise RecipeError(f"{label}: {format_path(path)} is an empty list; set all of it, "
                                  f"e.g. --set {format_path(path)}=[...]")
            if not _INDEX.fullmatch(part) or int(part) >= len(node):
                raise RecipeError(f"{label}: {format_path(path)} is a list of {len(node)} item(s); "
                                  f"{part!r} is not one of its indices (0 to {len(node) - 1})")
            step: str | int = int(part)
        else:
            step = int(part) if part not in node and _INT_KEY.fullmatch(part) else part
        path.append(step)
        if i == len(parts) - 1:
            node[step] = value
            sources.assign(tuple(path), value, where)
            break
        child = node.get(step) if isinstance(node, dict) else node[step]
        if child is None:  # missing or null: create the mapping
            child = node[step] = {}
            sources.assign(tuple(path), child, where)
        elif not isinstance(child, (dict, list)):
            raise RecipeError(f"{label}: {format_path(path)} is {show_value(child)}, not a mapping or a list")
        node = child
    _absolutize(data, [f for f in PATH_FIELDS if f[:len(path)] == tuple(path)], os.getcwd())
