"""Feature extraction: pooled outputs of named layers over a dataset, into one safetensors file.

A layer is a dotted module name (``layer4``, ``features.7.conv``); a forward hook records its
output on every batch and pools it to one vector per example, so each layer gives an
``(N, C)`` matrix whatever its output shape. Augmentations are off and the training part is
read in dataset order, so the same model and data always give the same features.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader

from recipec._files import check_output, require_path
from recipec.compiler.compile import compile_recipe
from recipec.compiler.data_config import build_data, data_config
from recipec.device import resolve_device
from recipec.errors import CheckpointError, DatasetError, ModelError
from recipec.inference.restore import model_from, read_export
from recipec.provenance import RECIPE_KEY
from recipec.recipe.load import dump_recipe, load_recipe
from recipec.weights import formats

__all__ = ["POOLS", "SPLITS", "extract_features", "features", "layer_names"]

POOLS = ("avg", "max")
SPLITS = ("train", "val", "all")
_RECIPE_SUFFIXES = (".yaml", ".yml", ".json")
_EXPORT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_META = "recipec.features."


def layer_names(model: nn.Module) -> list[str]:
    """Every dotted module name of ``model`` that can be a layer, in definition order.

    The model itself (name ``""``) is left out: its output is the logits, which the
    classifier's own name already gives.
    """
    return [name for name, _ in model.named_modules() if name]


def extract_features(model: nn.Module, loader: Any, layers: Sequence[str], *, device: torch.device,
                     pool: str = "avg") -> dict[str, torch.Tensor]:
    """Run ``model`` over ``loader`` and keep one pooled vector per example for each layer.

    Each layer's output is reduced to ``(N, C)``: ``(N, C, H, W)`` feature maps are pooled
    over H and W, ``(N, T, C)`` token sequences over T (``avg`` or ``max`` either way),
    ``(N, C)`` is kept, and any other rank is flattened to ``(N, -1)``. A layer that returns
    a tuple, list or mapping (an LSTM's ``(output, (h, c))``) contributes its first tensor.
    The model runs in eval mode without gradients; the train/eval mode of every module is
    restored afterwards and the hooks are always removed.

    Args:
        model: any module; inputs are cast to its device and floating dtype.
        loader: yields ``(images, labels)`` batches, in the order the rows should have.
        layers: dotted module names (see :func:`layer_names`); repeats are dropped.
        device: where the forward passes run.
        pool: ``avg`` or ``max``.

    Returns:
        ``{layer: (N, C) float32 CPU tensor, ..., "labels": (N,) int64}``.

    Raises:
        ModelError: an unknown layer (with close matches), a layer that does not run exactly
            once per forward pass, an output without a tensor, an unknown ``pool``.
        DatasetError: the loader yields no examples.

    Example:
        >>> feats = extract_features(model, loader, ["layer3", "fc"], device=torch.device("cpu"))
        >>> feats["layer3"].shape, feats["labels"].shape
        (torch.Size([500, 256]), torch.Size([500]))
    """
    names = _check_layers(model, layers)
    if pool not in POOLS:
        raise ModelError(f"pool {pool!r}: choose one of {', '.join(POOLS)}")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    rows: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    labels: list[torch.Tensor] = []

    def recorder(name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            rows[name].append(_pooled(name, _first_tensor(name, output), pool))
        return hook

    modes = {m: m.training for m in model.modules()}
    handles = [model.get_submodule(name).register_forward_hook(recorder(name)) for name in names]
    try:
        model.eval()
        with torch.no_grad():
            for batch, (images, targets) in enumerate(loader):
                model(images.to(device, dtype))
                labels.append(torch.as_tensor(targets, dtype=torch.int64).cpu())
                for name in names:
                    # A module reused inside the forward (or skipped by it) has no one row per example.
                    if len(rows[name]) != batch + 1:
                        calls = len(rows[name]) - batch
                        raise ModelError(f"layer {name!r} ran {calls} times in one forward pass, not once; "
                                         "pick a module the forward calls exactly once, e.g. its parent")
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    if not labels:
        raise DatasetError("the data loader yielded no examples, so there are no features to extract")
    out = {name: torch.cat(rows[name]) for name in names}
    out["labels"] = torch.cat(labels)
    return out


def features(target: str | os.PathLike[str], *, layers: Sequence[str], out: str | os.PathLike[str],
             split: str = "all", overrides: Sequence[str] = (), device: str | None = None,
             batch_size: int | None = None, pool: str = "avg", trust_factories: Sequence[str] = ()) -> Path:
    """Extract pooled features of a recipe's dataset into a safetensors file.

    The model is compiled from a recipe (its weights and ``source`` applied, as ``recipec
    plan`` shows it), or rebuilt from a recipec export, whose embedded recipe also gives the
    data. Augmentations are off and the training part is read in dataset order.

    Args:
        target: a recipe (``.yaml``, ``.yml``, ``.json``), or an export (``.safetensors``,
            ``.pt``, ``*.safetensors.index.json``, or a run directory holding one).
        layers: dotted module names (see :func:`layer_names`).
        out: the ``.safetensors`` file to write (atomically).
        split: ``train``, ``val``, or ``all`` (train rows, then val rows).
        overrides: ``KEY=VALUE`` recipe overrides, as by ``--set`` (recipes only).
        device: overrides the recipe's ``device``.
        batch_size: overrides ``data.batch_size``.
        pool: ``avg`` or ``max`` over the spatial (or token) positions.
        trust_factories: custom factories (``"package.module:factory"``, exact names) that an
            export's recipe may import and call; any other it names is refused before anything
            is imported. A recipe target is yours and needs none.

    Returns:
        ``out``. It holds one ``(N, C)`` float32 tensor per layer, named as the layer, and
        ``labels`` ``(N,)`` int64, with metadata ``recipec.features.{layers,classes,split,pool,source}``
        (lists as JSON) and the resolved recipe under ``recipec.recipe``.

    Raises:
        RecipecError: a target that is missing or of an unknown kind, a bad recipe or export,
            an unknown layer, split or pool, a dataset that is not there. Nothing is written then.

    Example:
        >>> features("runs/qs/model.safetensors", layers=["layer4", "fc"], out="feats.safetensors")
        >>> feats = safetensors.torch.load_file("feats.safetensors")   # {"layer4": (N, 512), ...}
    """
    if split not in SPLITS:
        raise DatasetError(f"split {split!r}: choose one of {', '.join(SPLITS)}")
    if pool not in POOLS:
        raise ModelError(f"pool {pool!r}: choose one of {', '.join(POOLS)}")
    if not Path(require_path(out, what="features: --out", error=CheckpointError)).name.endswith(".safetensors"):
        raise CheckpointError(f"{out}: features are written as safetensors; name the output *.safetensors")
    if batch_size is not None and (isinstance(batch_size, bool) or not 1 <= batch_size <= 65_536):
        raise DatasetError(f"batch_size must be from 1 to 65536 (as data.batch_size), got {batch_size}")
    target = require_path(target, what="features: the recipe or export", error=CheckpointError)  # "" is not "."
    check_output(out, inputs=[target], what="the features", error=CheckpointError)
    recipe, model, run_on, recipe_yaml = _model_and_recipe(Path(target), overrides, device, trust_factories)
    check_output(out, inputs=[recipe.source.checkpoint if recipe.source else None], what="the features",
                 error=CheckpointError)
    _check_layers(model, layers)  # before the dataset loads: a typo fails fast

    config = data_config(recipe, augment=())
    data = build_data(config if batch_size is None else config.replace(batch_size=batch_size))
    if split == "val" and data.val is None:
        raise DatasetError([(("data", "val_fraction"), "is 0, so there is no val split; use split train")])
    parts = [data.train] if split != "val" else []
    if split != "train" and data.val is not None:
        parts.append(data.val)
    # Not data.train itself: it shuffles, and rows (and labels) must follow the dataset.
    rows: ConcatDataset[Any] = ConcatDataset([part.dataset for part in parts])
    loader: DataLoader[Any] = DataLoader(rows, batch_size=data.train.batch_size, shuffle=False,
                                         num_workers=data.train.num_workers)
    feats = extract_features(model, loader, layers, device=run_on, pool=pool)

    names = [name for name in feats if name != "labels"]
    metadata = {
        _META + "layers": json.dumps(names),
        _META + "classes": json.dumps(data.classes),
        _META + "split": split,
        _META + "pool": pool,
        _META + "source": os.fspath(target),
        RECIPE_KEY: recipe_yaml if recipe_yaml is not None else dump_recipe(recipe),
    }
    formats.save(feats, out, metadata=metadata)
    return Path(out)


def _model_and_recipe(target: Path, overrides: Sequence[str], device: str | None,
                      trust_factories: Sequence[str]) -> tuple[Any, nn.Module, torch.device, str | None]:
    """(recipe, model on its device, that device, the export's own recipe YAML or None)."""
    name = target.name.lower()
    if name.endswith(_RECIPE_SUFFIXES) and not name.endswith(".index.json"):
        compiled = compile_recipe(load_recipe(target, overrides), device=device)
        return compiled.recipe, compiled.model, compiled.device, None
    if not (name.endswith(_EXPORT_SUFFIXES) or name.endswith(".index.json") or target.is_dir()):
        if not target.exists():
            raise CheckpointError(f"{target}: no such file or directory")
        raise CheckpointError(f"{target}: not a recipe ({', '.join(_RECIPE_SUFFIXES)}) or a recipec export "
                              f"({', '.join(_EXPORT_SUFFIXES)}, *.safetensors.index.json, a run directory)")
    if overrides:
        raise CheckpointError(f"{target}: overrides apply to recipes, and this is an export; pass the "
                              "recipe instead, or drop the overrides")
    recipe, _, checkpoint = read_export(target)
    run_on = resolve_device(device or recipe.device)
    # one read of the file: the recipe, the metadata and the weights all come from `checkpoint`
    model = model_from(recipe, checkpoint, target, trust_factories=trust_factories)
    return recipe, model.to(run_on), run_on, checkpoint.metadata.get(RECIPE_KEY)


def _check_layers(model: nn.Module, layers: Sequence[str]) -> list[str]:
    """The layers without repeats, or a ModelError naming each unknown one and what is close to it."""
    known = layer_names(model)
    known_set = set(known)
    names = list(dict.fromkeys(layers))
    top = [n for n in known if "." not in n]
    some = ", ".join(top[:10]) + (", ..." if len(top) > 10 else "")
    if not names:
        raise ModelError(f"no layers given; name one or more modules, e.g. {some}")
    problems = []
    for name in names:
        if name == "labels":
            problems.append("layer name 'labels' is taken by the labels tensor of the output; pick another module")
        elif name not in known_set:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
            problems.append(f"unknown layer {name!r}; {hint}layers are dotted module names: {some}")
    if problems:
        raise ModelError(problems)
    return names


def _first_tensor(name: str, output: Any) -> torch.Tensor:
    found = _find_tensor(output)
    if found is None:
        raise ModelError(f"layer {name!r} returns {type(output).__name__} with no tensor in it; pick another module")
    return found


def _find_tensor(output: Any) -> torch.Tensor | None:
    """The first tensor in ``output``, depth first through tuples, lists and mapping values."""
    if isinstance(output, torch.Tensor):
        return output
    items = output.values() if isinstance(output, Mapping) else output if isinstance(output, (tuple, list)) else ()
    return next((t for t in map(_find_tensor, items) if t is not None), None)


def _pooled(name: str, x: torch.Tensor, pool: str) -> torch.Tensor:
    """(N, ...) -> (N, C) float32 on the CPU."""
    if x.dim() == 0:
        raise ModelError(f"layer {name!r} returns a scalar, not one value per example; pick another module")
    if x.dim() == 4:  # (N, C, H, W)
        x = x.mean((2, 3)) if pool == "avg" else x.amax((2, 3))
    elif x.dim() == 3:  # (N, T, C) tokens
        x = x.mean(1) if pool == "avg" else x.amax(1)
    elif x.dim() != 2:
        x = x.reshape(x.shape[0], -1)
    return x.detach().to("cpu", torch.float32)
