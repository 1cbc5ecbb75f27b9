"""The ``pt2`` export (``torch.export``): a graph with its weights, the recipe and provenance inside,
checked against the model before it appears; and ``recipec convert model.pt2 model.safetensors``.

A model ``torch.export`` cannot trace fails with the operator or line it stopped at, never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recipec.compiler.compile import resolve_preprocessing
from recipec.convert.metadata import converted_from, moved_recipe
from recipec.errors import CheckpointError, ExportError
from recipec.provenance import PROVENANCE_KEY, RECIPE_KEY, file_digest
from recipec.recipe.spec import Recipe
from recipec.weights import formats, pt2

__all__ = ["convert_pt2", "export_pt2", "pt2_state", "quiet_torch", "to_pt2"]

# the batch sizes the exported graph is compared with the model at (1 and an odd one, as the contract checks)
_CHECK_BATCHES = (1, 7)
_ATOL = 1e-5
_OP = re.compile(r"(torch\.ops\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+|aten::[A-Za-z0-9_.]+)")
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\w+)(?:, code: |\n\s*)([^\n]*)')


def to_pt2(model: nn.Module, recipe: Recipe, target: Path, metadata: Mapping[str, str]) -> Path:
    """Export ``model`` (float32, CPU) as ``recipe.export.pt2`` says, verified, atomically at ``target``."""
    side = recipe.data.image_size
    if not isinstance(side, int):  # data.image_size: from_weights
        side = resolve_preprocessing(recipe)["image_size"]
    options = recipe.export.pt2
    return export_pt2(model, target, input_shape=(2, recipe.model.in_channels, side, side), strict=options.strict,
                      dynamic_batch=options.dynamic_batch, metadata=metadata, arch=recipe.model.arch)


def export_pt2(model: nn.Module, path: Path, *, input_shape: tuple[int, ...], strict: bool = False,
               dynamic_batch: bool = True, metadata: Mapping[str, str], arch: str) -> Path:
    """``torch.export.export`` of ``model`` in eval mode, compared with it at batch 1 and 7, saved atomically.

    Args:
        model: the network (float32, CPU, eval mode).
        path: the ``.pt2`` to write.
        input_shape: an example input shape; its batch (2) is symbolic with ``dynamic_batch``.
        strict: trace with TorchDynamo instead of non-strict tracing.
        dynamic_batch: any batch size; else the graph takes ``input_shape[0]`` only (and is checked at it).
        metadata: str -> str, saved as the archive's extra files.
        arch: named in messages.

    Raises:
        ExportError: the model does not export (the message names the operator), or the graph's
            outputs differ from the model's by more than 1e-5.
    """
    model = model.eval()
    example = torch.randn(*input_shape)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=65_536)},) if dynamic_batch else None
    try:
        with quiet_torch():
            program = torch.export.export(model, (example,), dynamic_shapes=dynamic, strict=strict)
    except Exception as exc:  # torch raises many kinds; the user needs the operator and the first line
        raise ExportError(_failure(exc, arch, strict)) from exc
    module = program.module()
    generator = torch.Generator().manual_seed(0)
    for batch in (_CHECK_BATCHES if dynamic_batch else (input_shape[0],)):
        x = torch.randn(batch, *input_shape[1:], generator=generator)
        with torch.inference_mode():
            expected, got = _first(model(x)), _first(module(x))
        worst = float((expected - got).abs().max())
        if not worst <= _ATOL:
            raise ExportError(f"pt2 export of {arch}: the graph's outputs differ from the model's by {worst:.3g} at "
                              f"batch {batch} (tolerance {_ATOL}); leave pt2 out of export.formats")
    return pt2.save(program, path, metadata=metadata)


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """torch's export logs (partial graphs, archive notes) kept off the terminal: a failure is an ExportError."""
    chatter = io.StringIO()
    loggers = [logging.getLogger(name) for name in ("torch", "torch._dynamo", "torch.export", "torch._export",
                                                    "torch.fx.experimental.symbolic_shapes")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def pt2_state(program: Any) -> dict[str, torch.Tensor]:
    """The model's ``state_dict`` an exported program holds (parameters and buffers, by their module names)."""
    signature = program.graph_signature
    names = [*signature.parameters, *signature.buffers]
    state = {**program.state_dict, **{k: v for k, v in program.constants.items() if isinstance(v, torch.Tensor)}}
    return {name: state[name].detach().clone() for name in names if name in state}


def _first(out: Any) -> torch.Tensor:
    return (out[0] if isinstance(out, (tuple, list)) else out).float()


def _failure(exc: BaseException, arch: str, strict: bool) -> str:
    """"pt2 export of ARCH failed at FILE:LINE in FUNC (`code`) [operator]: first line of torch's message; the fix"."""
    text = str(exc)
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    frames = [m for m in _FRAME.finditer(text) if f"{os.sep}torch{os.sep}" not in m.group(1)]
    where = ""
    if frames:  # the last frame outside torch: the model's own line
        file, line, func, code = frames[-1].groups()
        where = f" at {file}:{line} in {func} (`{code.strip()}`)"
    op = _OP.search(text)
    if op:
        where += f" [operator {op.group(1)}]"
    other = "false" if strict else "true"
    return (f"pt2 export of {arch} failed{where}: {first[:300]} ({type(exc).__name__}); try "
            f"export.pt2.strict: {other}, or leave pt2 out of export.formats")


def convert_pt2(source: Path, target: Path, *, fmt: str, dtype: str | None, shard_size: int | None,
                converted_from_key: str) -> list[Path]:
    """``recipec convert model.pt2 model.safetensors``: the graph's weights (parameters and buffers by their
    module names, so ``recipec.load`` rebuilds the model from the recipe that travels along) into a checkpoint.

    Raises:
        CheckpointError: the ``.pt2`` is refused or unreadable (see :mod:`recipec.weights.pt2`), or the
            output format is ONNX (convert the safetensors output, or export onnx in the run).
    """
    if fmt not in ("safetensors", "torch"):
        raise CheckpointError(f"{target}: a .pt2 converts to safetensors or torch (its weights); for ONNX convert "
                              "that output, or add onnx to the run's export.formats")
    program, metadata = pt2.load(source)
    state = pt2_state(program)
    if dtype is not None:
        cast = getattr(torch, dtype)
        state = {k: v.to(cast) if v.is_floating_point() else v for k, v in state.items()}
    carried = {k: v for k, v in metadata.items() if k in (RECIPE_KEY, PROVENANCE_KEY, "format")}
    if RECIPE_KEY in carried:
        carried[RECIPE_KEY] = moved_recipe(carried[RECIPE_KEY], source.parent, target.parent)
    carried[converted_from_key] = converted_from(source, "pt2", file_digest(source))
    return formats.save(state, target, metadata=carried, shard_size=shard_size)
