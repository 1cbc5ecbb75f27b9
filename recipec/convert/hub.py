"""``export.formats: [hub]``: ``RUN/hub/``, a folder the Hugging Face Hub takes as it is.

What it holds, by family (the card, ``README.md``, is rendered into it by :func:`recipec.card.render.write_card`):

- timm (``model.arch: timm/<name>``): timm's own layout, written by timm's ``save_config_for_hf``:
  ``config.json`` (``architecture``, ``num_classes``, ``num_features``, ``global_pool``, ``label_names``,
  ``model_args``, ``pretrained_cfg`` with the run's eval preprocessing) and ``model.safetensors``.
  ``timm.create_model("local-dir:RUN/hub", pretrained=True)`` rebuilds the run's model,
  ``timm.data.resolve_model_data_config`` + ``create_transform`` its eval preprocessing, and
  transformers' ``AutoModelForImageClassification`` (TimmWrapper) the same logits with ``id2label``.
- hf (``model.arch: hf/...``): transformers' ``save_pretrained`` layout (``config.json`` with the run's
  ``id2label``, transformers' tensor names, ``preprocessor_config.json``), see :mod:`recipec.convert.hub_hf`.
- torchvision: ``model.safetensors`` whose keys load ``torchvision.models.<arch>(num_classes=N)``
  strictly, and a ``config.json`` naming the architecture, the classes and the preprocessing.

``model.safetensors`` carries the recipe and provenance like every export, so ``recipec.load`` and
``load_predictor`` read the folder too. The other exports of the run (``model.pt``, ``model.onnx``)
are linked in (a hard link, else a copy). The folder is written beside ``RUN/hub`` under a temporary
name and renamed into place: a reader never sees half of it.

Before anything is written the tensors are checked against the model the foreign library builds
from the folder (timm: from ``config.json`` itself), so a folder that would not load is never made.

The square resize of a run without pretrained weights (float tensors, bilinear, antialiased) is
written as timm's ``squash`` crop at ``crop_pct`` 1, which resizes the decoded 8-bit image instead:
the two agree up to that rounding (about 1/255 before normalisation), not bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from recipec._atomic import atomic_link
from recipec._version import __version__
from recipec.card.hub import FOLDER
from recipec.convert.hub_hf import PROCESSOR_FILE, hf_hub_files
from recipec.errors import CheckpointError, ExportError
from recipec.inference.preprocessing import Preprocessing, preprocessing_of
from recipec.model.families import default_head_path
from recipec.recipe.archs import family_name
from recipec.recipe.checks import hub_problem
from recipec.weights import formats

__all__ = ["save", "timm_data_config"]

_LINKED = ("model.pt", "model.onnx")  # the run's other exports, linked in when present
# pretrained_cfg keys that describe the source weights' tag, kept only when the run started from that tag
_SOURCE_KEYS = ("tag", "license", "origin_url", "paper_ids", "paper_name", "notes")


def save(run: Path, model: nn.Module, state: Mapping[str, torch.Tensor], *, arch: str, kwargs: Mapping[str, Any],
         metadata: dict[str, str], provenance: dict[str, Any], exports: Sequence[Path] = ()) -> list[Path]:
    """Write ``run/hub/`` (replacing an earlier one) for ``model`` with the exported ``state``.

    Args:
        run: the run directory, where ``hub/`` goes.
        model: the fine-tuned model (timm reads its structure: pooling, feature width, input traits).
        state: the exported tensors (``export.dtype`` applied).
        arch: ``model.arch``; kwargs: ``model.kwargs``.
        metadata: the export metadata (recipe and provenance) every export carries.
        provenance: the run's provenance (classes, preprocessing, base weights).
        exports: the files this export wrote into ``run``: ``model.pt`` and ``model.onnx`` are linked
            into the folder, and a single-file ``model.safetensors`` is its weights.

    Returns:
        The files written, the folder's ``config.json`` first.

    Raises:
        ExportError: the family cannot build the model from the folder, or the tensors do not fit what it builds.
    """
    family = family_name(arch)
    if family not in ("timm", "torchvision", "hf"):
        raise ExportError(hub_problem(arch, head_type=None, in_channels=3) or arch)
    folder = run / FOLDER
    for stale in run.glob(f".{FOLDER}.*.tmp"):  # what a killed export left (the run directory is locked: not another's)
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    tmp = run / f".{FOLDER}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        names = {Path(p).name: Path(p) for p in exports}
        if family == "hf":  # save_pretrained's layout: transformers' names, config and image processor (hub_hf)
            hf_config, processor, tensors = hf_hub_files(
                model, state, classes=_classes(provenance, int(getattr(getattr(model, "config", None), "num_labels", 0))),
                prep=_preprocessing(provenance))
            hf_config.to_json_file(str(tmp / "config.json"))
            (tmp / PROCESSOR_FILE).write_text(json.dumps(processor, indent=2) + "\n", encoding="utf-8")
            formats.save(tensors, tmp / "model.safetensors", metadata=metadata)
        else:
            config = (_timm_config(model, tmp / "config.json", kwargs=kwargs, provenance=provenance)
                      if family == "timm" else _torchvision_config(model, arch, kwargs, provenance))
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            _check_fits(family, arch, config, tmp, state)
            if "model.safetensors" in names:  # the same tensors and metadata, just written
                atomic_link(names["model.safetensors"], tmp / "model.safetensors")
            else:  # none, or sharded: the Hub's loaders read one file
                formats.save(dict(state), tmp / "model.safetensors", metadata=metadata)
        for name in _LINKED:
            if name in names:
                atomic_link(names[name], tmp / name)
        _swap(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    extra = [folder / PROCESSOR_FILE] if family == "hf" else []
    return [folder / "config.json", folder / "model.safetensors", *extra,
            *(folder / n for n in _LINKED if (folder / n).exists())]


def timm_data_config(prep: Preprocessing, recorded_crop_pct: float | None = None) -> dict[str, Any]:
    """The run's eval preprocessing as timm's data config (``input_size``, ``interpolation``, ``crop_pct``,
    ``crop_mode``, ``mean``, ``std``), so that ``timm.data.create_transform`` resizes as the run did.

    ``crop_pct`` is chosen so that timm's ``floor(image_size / crop_pct)`` gives the run's resize exactly.
    """
    size, resized = prep["image_size"], prep["resize_size"]
    square = prep["rule"] == "square"
    crop_pct = 1.0 if square else next(
        (c for c in (recorded_crop_pct, size / resized) if c and math.floor(size / c) == resized),
        size / (resized + 0.5))  # floor(resized + 0.5) == resized, whatever the float rounding
    norm = prep["normalization"] or {"mean": [0.0] * 3, "std": [1.0] * 3}
    return {"input_size": (prep["in_channels"], size, size), "interpolation": prep["interpolation"],
            "crop_pct": crop_pct, "crop_mode": "squash" if square else prep["crop_mode"],
            "mean": tuple(norm["mean"]), "std": tuple(norm["std"])}


def _classes(provenance: dict[str, Any], num_classes: int) -> list[str]:
    classes = provenance.get("classes")
    if isinstance(classes, list) and len(classes) == num_classes:
        return [str(c) for c in classes]
    return [str(i) for i in range(num_classes)]


def _preprocessing(provenance: dict[str, Any]) -> Preprocessing:
    try:
        return preprocessing_of(provenance)
    except CheckpointError as exc:
        raise ExportError(f"hub folder: the run records no preprocessing to write into config.json ({exc})") from exc


def _timm_config(model: nn.Module, path: Path, *, kwargs: Mapping[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    """timm's config.json of ``model``, written by timm's own ``save_config_for_hf``, with the run's
    preprocessing, classes and input channels."""
    from timm.models._hub import save_config_for_hf  # noqa: PLC0415 (timm: an optional extra, only for timm models)

    prep = _preprocessing(provenance)
    resize = ((provenance.get("data") or {}).get("resize") or {})
    data = timm_data_config(prep, resize.get("crop_pct"))
    labels = {"label_names": _classes(provenance, int(getattr(model, "num_classes", 0)))}
    # timm checks the channels against model.in_chans, which recipec's first-convolution adaptation leaves as built
    seen = {**data, "input_size": (int(getattr(model, "in_chans", 0) or 3), *data["input_size"][1:])}
    try:
        try:
            save_config_for_hf(model, str(path), model_config=labels, data_config=seen)
        except TypeError:  # a timm 1.0 before data_config: the preprocessing is set below
            save_config_for_hf(model, str(path), model_config=labels)
        config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, TypeError, AssertionError, AttributeError, KeyError) as exc:
        raise ExportError(f"hub folder: timm cannot describe the model ({exc})") from exc
    cfg = config["pretrained_cfg"]
    cfg.update({k: list(v) if isinstance(v, tuple) else v for k, v in data.items()})  # the run's, whatever timm kept
    for key in ("test_input_size", "test_crop_pct", "test_pool_size"):  # the source weights' test-time advice
        cfg.pop(key, None)
    args = config.setdefault("model_args", {})
    args.pop("num_classes", None)  # the root's num_classes says it; transformers' TimmWrapper passes both otherwise
    for key, value in kwargs.items():
        args.setdefault(key, value)
    if prep["in_channels"] != 3:  # recipec adapts the first convolution after timm built it
        args["in_chans"] = prep["in_channels"]
    base = str((provenance.get("base_model") or {}).get("weights") or "")
    if base.partition(".")[2] != cfg.get("tag"):  # the config describes this model, not weights it did not start from
        for key in _SOURCE_KEYS:
            cfg.pop(key, None)
    return config


def _torchvision_config(model: nn.Module, arch: str, kwargs: Mapping[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    prep = _preprocessing(provenance)
    head: Any = model.get_submodule(default_head_path(model, arch))
    num_classes = int(head.out_channels if isinstance(head, nn.Conv2d) else head.out_features)  # squeezenet: a conv
    return {"library_name": "torchvision", "architecture": arch, "num_classes": num_classes,
            "label_names": _classes(provenance, num_classes), "model_args": dict(kwargs),
            "preprocessing": dict(prep), "recipec_version": __version__}


def _check_fits(family: str, arch: str, config: dict[str, Any], folder: Path, state: Mapping[str, torch.Tensor]) -> None:
    """The tensors against the model the foreign library builds from the folder: the same keys and shapes."""
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated
            reference = _foreign_model(family, arch, config, folder)
    except (RuntimeError, NotImplementedError):  # a model whose construction computes on its tensors
        reference = _foreign_model(family, arch, config, folder)
    expected = reference.state_dict()
    library = "timm.create_model('local-dir:...')" if family == "timm" else f"torchvision.models.{arch}(num_classes=...)"
    problems = [f"{library} has {k!r}, which the model lacks" for k in sorted(set(expected) - set(state))[:10]]
    problems += [f"the model has {k!r}, which {library} lacks" for k in sorted(set(state) - set(expected))[:10]]
    problems += [f"{k!r} has shape {list(state[k].shape)}, {library} {list(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape][:10]
    if problems:
        raise ExportError([*(f"hub folder: {p}" for p in problems),
                           f"hub folder: {family} would not load these weights; drop hub from export.formats"])


def _foreign_model(family: str, arch: str, config: dict[str, Any], folder: Path) -> nn.Module:
    if family == "timm":
        import timm  # noqa: PLC0415 (timm: an optional extra, here only for timm models)

        return timm.create_model(f"local-dir:{folder}", pretrained=False)
    try:
        return torchvision.models.get_model(arch, num_classes=config["num_classes"], **config["model_args"])
    except (TypeError, ValueError) as exc:
        raise ExportError(f"hub folder: torchvision cannot build {arch} with {config['model_args']!r} ({exc})") from exc


def _swap(tmp: Path, folder: Path) -> None:
    """``tmp`` becomes ``folder``; an earlier folder is removed once the new one is in place."""
    old = None
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
    elif folder.exists():
        old = folder.with_name(f".{FOLDER}.{secrets.token_hex(4)}.old.tmp")
        os.rename(folder, old)
    try:
        os.rename(tmp, folder)
    except BaseException:
        if old is not None:
            with contextlib.suppress(OSError):
                os.rename(old, folder)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

