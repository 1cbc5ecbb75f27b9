"""What a converted checkpoint carries about its source: the source's metadata as a str -> str
header, its recipe with the relative paths following the file, a training state's summary, and
``recipec.converted_from`` (the source's name, format and SHA-256, hashed in a thread).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from recipec import _json as clean_json
from recipec.errors import RecipecError
from recipec.provenance import PROVENANCE_KEY, RECIPE_KEY
from recipec.recipe._yaml import read_embedded
from recipec.recipe.load import relative_paths, resolve_paths
from recipec.weights import formats

__all__ = ["Sha256InBackground", "carried_metadata", "converted_from", "moved_recipe"]

_TRAINING_STATE = "recipec-training-state"  # recipec.train.state.FORMAT, without importing train/


class Sha256InBackground:
    """``formats.sha256(file)`` in a thread; leaving the block stops it (an error leaves the hash unwanted)."""

    def __init__(self, file: Path) -> None:
        self._file, self._stop = file, threading.Event()
        self._digest: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="recipec-sha256", daemon=True)

    def _run(self) -> None:
        try:
            self._digest = formats.sha256(self._file, stop=self._stop)
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


def converted_from(checkpoint: formats.Checkpoint, sha256: str) -> str:
    return json.dumps({"file": checkpoint.files[0].name, "sha256": sha256, "format": checkpoint.format}, sort_keys=True)


def moved_recipe(recipe_yaml: str, source_dir: Path, target_dir: Path) -> str:
    """The carried recipe with its relative paths (relative to the source's run directory) following the file."""
    try:
        data = read_embedded(recipe_yaml, str(source_dir))
    except RecipecError:
        return recipe_yaml  # damaged: carried as it is, and reported where it is read
    if not isinstance(data, dict) or source_dir.resolve() == target_dir.resolve():
        return recipe_yaml
    data = relative_paths(resolve_paths(data, source_dir), target_dir)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False, width=10**9)


def carried_metadata(checkpoint: formats.Checkpoint) -> dict[str, str]:
    """The source's metadata as str -> str, without what the format itself records again."""
    meta, names = checkpoint.metadata, checkpoint.state_dict
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

