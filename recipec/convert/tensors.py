"""``recipec convert`` through torch: any source :func:`recipec.weights.formats.load` reads, casts of
any floating dtype, torch and ONNX targets, and a model rebuilt from a recipe.

:mod:`recipec.convert.checkpoint` imports this module (and so torch, about 1.4 s) only where the
bytes cannot simply be copied (see :mod:`recipec.weights.raw`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from recipec.recipe.spec import Recipe
from recipec.weights import formats, raw

__all__ = ["Model", "Output", "cast", "load", "write"]


class Output(NamedTuple):
    path: Path
    format: str
    shard: int | None           # bytes per shard


class Model(NamedTuple):
    recipe: Recipe | None       # the architecture (--recipe), else the one the file carries, if any
    trust: bool | tuple[str, ...]  # which custom factories may be called (True: the user's own recipe)
    mapped: bool = False        # read the tensors through the recipe's source: section first


def load(source: Path, allow_globals: Sequence[str], state_dict_key: str = "auto") -> formats.Checkpoint:
    return formats.load(source, allow_globals=allow_globals, state_dict_key=state_dict_key)


def cast(state: Mapping[str, torch.Tensor], dtype: str | None) -> dict[str, torch.Tensor]:
    """Floating tensors to ``dtype`` (``"float16"``...), integer buffers (``num_batches_tracked``) as they are."""
    if dtype is None:
        return dict(state)
    to: torch.dtype = getattr(torch, dtype)
    # Cast each stored tensor once, so that tied weights stay one tensor (stored once in safetensors).
    done: dict[tuple[Any, ...], torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if not tensor.is_floating_point() or tensor.dtype == to:
            out[name] = tensor
            continue
        view = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.shape, tensor.stride())
        if view not in done or not tensor.numel():
            done[view] = tensor.to(to)
        out[name] = done[view]
    return out


def write(state: dict[str, torch.Tensor], source: Path, output: Output, metadata: dict[str, str],
          model: Model, late: dict[str, formats.LateValue]) -> list[Path]:
    """Write the converted checkpoint: ONNX, or a model rebuilt from ``model``'s recipe (its factory
    trusted as ``model.trust`` says) to check the tensors fit it (mapped by its ``source:`` section
    first where ``model.mapped``), or the tensors as they are."""
    spec, trust, mapped = model
    if spec is not None or output.format == "onnx":
        # Rebuilding the architecture needs torchvision (~1.2 s to import): a conversion between tensor
        # formats without --recipe never pays for it.
        from recipec.convert import onnx  # noqa: PLC0415

        if spec is None:
            spec = onnx.embedded_recipe(metadata, source)
        rebuilt, state = onnx.rebuild(spec, state, source, trust, metadata, mapped=mapped)
        if output.format == "onnx":
            return [onnx.to_onnx(rebuilt, spec, output.path, {**metadata, **{k: v.resolve() for k, v in late.items()}})]
    target, fmt = output.path, output.format
    if (fmt == "torch" and target.suffix in raw.TORCH_SUFFIXES) or (
            fmt == "safetensors" and target.name.endswith((".safetensors", raw.INDEX_SUFFIX))):
        return formats.save(state, target, metadata=metadata, shard_size=output.shard, late=late)
    # --to with a suffix formats.save does not know: write under a known one beside dst, then rename.
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as scratch:
        written = formats.save(state, Path(scratch) / ("model.safetensors" if fmt == "safetensors" else "model.pt"),
                               metadata=metadata, late=late)
        os.replace(written[0], target)
    return [target]
