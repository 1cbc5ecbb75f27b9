"""What a converted checkpoint carries about its source: the source's metadata as a str -> str
header, its recipe with the relative paths following the file, a training state's summary, and
``recipec.converted_from`` (the source's name, format and SHA-256, hashed in a thread).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Container, Mapping
from pathlib import Path
from typing import Any

from recipec import _json as clean_json
from recipec.errors import RecipecError
from recipec.provenance import PROVENANCE_KEY, RECIPE_KEY
from recipec.weights import raw

__all__ = ["Sha256InBackground", "carried_metadata", "converted_from", "moved_recipe"]

_TRAINING_STATE = "recipec-training-state"  # recipec.train.state.FORMAT, without importing train/


class Sha256InBackground:
    """``raw.sha256(file)`` in a thread; leaving the block stops it (an error leaves the hash unwanted)."""

    def __init__(self, file: Path) -> None:
        self._file, self._stop = file, threading.Event()
        self._digest: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="recipec-sha256", daemon=True)

    def _run(self) -> None:
        try:
            self._digest = raw.sha256(self._file, stop=self._stop)
        except BaseException as exc:  # re-raised in the caller's thread by result()
            self._error = exc

    def __enter__(self) -> Sha256InBackground:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._digest, "the hash was stopped before it was asked for"
        return self._digest


def converted_from(file: Path, fmt: str, sha256: str) -> str:
    """The ``recipec.converted_from`` entry: the source file's name, format and SHA-256."""
    return json.dumps({"file": file.name, "sha256": sha256, "format": fmt}, sort_keys=True)


def moved_recipe(recipe_yaml: str, source_dir: Path, target_dir: Path) -> str:
    """The carried recipe with its relative paths (relative to the source's run directory) following the file."""
    # pydantic (~0.2 s) with the recipe modules: only for a source that carries a recipe
    from recipec.recipe._yaml import dump_yaml, read_embedded  # noqa: PLC0415
    from recipec.recipe.load import relative_paths, resolve_paths  # noqa: PLC0415

    try:
        data = read_embedded(recipe_yaml, str(source_dir))
    except RecipecError:
        return recipe_yaml  # damaged: carried as it is, and reported where it is read
    if not isinstance(data, dict) or source_dir.resolve() == target_dir.resolve():
        return recipe_yaml
    data = relative_paths(resolve_paths(data, source_dir), target_dir)
    return dump_yaml(data)  # reads back the same in recipec (YAML 1.2) and any other reader


def carried_metadata(meta: Mapping[str, Any], names: Container[str]) -> dict[str, str]:
    """The source's metadata as str -> str, without what the format itself records again (``names``: its tensors')."""
    if meta.get("format") == _TRAINING_STATE:
        return _training_state_metadata(meta)
    carried: dict[str, str] = {}
    for key, value in meta.items():
        # metadata[dropped] = kept records a tied weight: the safetensors save writes it anew.
        if not isinstance(key, str) or key in names or (isinstance(value, str) and value in names):
            continue
        if isinstance(value, str):
            carried[key] = value
            continue
        try:
            carried[key] = clean_json.dumps(value, sort_keys=True)
        except (TypeError, ValueError):
            continue  # not data JSON can hold; a str -> str header has no place for it
    return carried


def _training_state_metadata(state: Mapping[str, Any]) -> dict[str, str]:
    # Optimizer, scheduler and RNG states are for resuming; the weights keep the recipe and a summary.
    history = state.get("history") or [{}]
    last = history[-1] if isinstance(history[-1], dict) else {}
    provenance = {"epochs_trained": state.get("epoch"), "time": state.get("time"), "versions": state.get("versions"),
                  "final_metrics": {k: last.get(k) for k in ("train_loss", "val_loss", "val_acc")}}
    carried = {PROVENANCE_KEY: clean_json.dumps({k: v for k, v in provenance.items() if v is not None}, sort_keys=True)}
    if isinstance(state.get("recipe"), str):
        carried[RECIPE_KEY] = state["recipe"]
    return carried

