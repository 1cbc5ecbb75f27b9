"""int8 ONNX (``model.int8.onnx``) with ``onnxruntime.quantization``, from a float32 recipec ONNX export.

- ``static``: weights and activations int8 in QDQ form (``QuantizeLinear``/``DequantizeLinear`` pairs that
  onnxruntime fuses into integer kernels); activation ranges calibrated (min/max) on the batches given,
  which a build takes from its training split through the EVAL transform (never augmented images).
  Weights signed int8, activations unsigned (onnxruntime's advice for x86 CPUs).
- ``dynamic``: weights int8, activations quantized at run time from each batch's range; needs no data.
  Weights are unsigned here: onnxruntime's CPU ``ConvInteger`` has no signed-weight kernel.

``quant_pre_process`` (shape inference and graph optimisation) runs first, as onnxruntime advises.
The output carries the source's ``metadata_props`` (recipe, provenance) plus ``recipec.quantization``
(method, per_channel, calibration batches), so ``recipec.load_predictor`` and ``recipec eval`` read it as
any ONNX export. Accuracy is the known trap (onnxruntime #11286): a build evaluates every artifact.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from recipec._atomic import atomic_path
from recipec.compiler.data_config import build_data, build_split, data_config
from recipec.errors import CheckpointError, ExportError
from recipec.provenance import read_export_metadata
from recipec.recipe.spec import Recipe
from recipec.weights.onnx import INPUT_NAME, read_onnx

__all__ = ["METHODS", "QUANTIZATION_KEY", "calibration_batches", "quantize_file", "quantize_onnx"]

METHODS = ("static", "dynamic")
QUANTIZATION_KEY = "recipec.quantization"


def quantize_onnx(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, method: str, per_channel: bool = True,
                  calibration: Iterable[np.ndarray] | None = None) -> Path:
    """Write ``dst``, an int8 copy of the float32 ONNX file ``src``, atomically.

    Args:
        src: a float32 ONNX model (one input, batch first).
        dst: the ``.onnx`` to write (``model.int8.onnx`` in a run).
        method: ``static`` or ``dynamic``.
        per_channel: one scale per output channel of each weight.
        calibration: ``static`` only: input batches (``float32`` arrays shaped like the input), each as the
            model sees it (transformed and normalised); every one is used.

    Raises:
        CheckpointError: ``src`` is not a readable ONNX file, or ``method`` / ``calibration`` do not fit.
        ExportError: onnxruntime could not quantize the graph.
    """
    from onnxruntime import quantization as q  # noqa: PLC0415 (onnxruntime.quantization: ~1 s, only when quantizing)
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415 (as above)

    if method not in METHODS:
        raise CheckpointError(f"--quantize {method!r}: choose one of {', '.join(METHODS)}")
    if method == "dynamic" and calibration is not None:
        raise CheckpointError("dynamic quantization takes no calibration data; leave --recipe out")
    source = read_onnx(src)
    target = Path(dst)
    batches = 0
    with tempfile.TemporaryDirectory(prefix=".recipec-quantize-", dir=target.parent) as work, _quiet():
        prepared, out = Path(work) / "prepared.onnx", Path(work) / "int8.onnx"
        try:
            quant_pre_process(os.fspath(src), os.fspath(prepared), skip_symbolic_shape=True)
            if method == "static":
                reader = _Batches(calibration or [], _input_name(source))
                q.quantize_static(prepared, out, reader, quant_format=q.QuantFormat.QDQ, per_channel=per_channel,
                                  activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                                  calibrate_method=q.CalibrationMethod.MinMax)
                batches = reader.count
                if batches == 0:
                    raise CheckpointError("static quantization needs calibration batches; none were given")
            else:
                q.quantize_dynamic(prepared, out, per_channel=per_channel, weight_type=q.QuantType.QUInt8)
        except (CheckpointError, ExportError):
            raise
        except Exception as exc:  # onnxruntime raises plain exceptions for graphs it cannot quantize
            raise ExportError(f"{src}: onnxruntime could not quantize it ({method}): "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from exc
        model = onnx.load(out)
    del model.metadata_props[:]
    carried = {p.key: p.value for p in source.metadata_props}
    carried[QUANTIZATION_KEY] = json.dumps({"method": method, "per_channel": per_channel, "format": "QDQ" if
                                            method == "static" else "dynamic", "calibration_batches": batches},
                                           sort_keys=True)
    onnx.helper.set_model_props(model, carried)
    with atomic_path(target) as tmp:
        onnx.save(model, tmp)
    return target


def calibration_batches(recipe: Recipe, classes: Sequence[str], count: int) -> Iterator[np.ndarray]:
    """Up to ``count`` batches (``data.batch_size`` images) of the recipe's training split through its EVAL
    transform, never augmented: a sample of the split drawn with the recipe's seed (a folder read in class
    order would calibrate on one class), as the model's input (float32, normalised)."""
    train = build_split(data_config(recipe), split="train", classes=classes, batch_size=recipe.data.batch_size)
    dataset: Any = train.loader.dataset  # a map-style dataset: len() and [i]
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(recipe.seed)).tolist()
    size = recipe.data.batch_size
    for b in range(min(count, -(-len(order) // size))):
        yield torch.stack([dataset[i][0] for i in order[b * size:(b + 1) * size]]).float().numpy()


def quantize_file(src: Path, dst: Path, *, method: str, recipe: Recipe | None) -> Path:
    """``recipec convert model.onnx model.int8.onnx --quantize dynamic`` (or ``static --recipe R``, calibrated
    on R's training data; its ``export.quantize`` gives ``calibration_batches`` and ``per_channel``).

    Raises:
        CheckpointError: not ONNX in and out, static without a recipe, or dynamic with one.
        DatasetError, RecipeError: the recipe's data cannot be read.
    """
    problems = [f"{p}: --quantize reads and writes ONNX; name it .onnx" for p in (src, dst) if p.suffix != ".onnx"]
    if method == "static" and recipe is None:
        problems.append("--quantize static calibrates on data: pass --recipe R (its training split is used)")
    if method == "dynamic" and recipe is not None:
        problems.append("--quantize dynamic needs no data: leave --recipe out")
    if problems:
        raise CheckpointError(problems)
    spec = recipe.export.quantize if recipe is not None else None
    per_channel = spec.per_channel if spec is not None else True
    batches = None
    if recipe is not None:
        _, provenance = read_export_metadata({p.key: p.value for p in read_onnx(src).metadata_props})
        # the labels are not used: any class list that reads the recipe's images will do
        classes = provenance.get("classes") or recipe.data.classes or build_data(data_config(recipe)).classes
        batches = list(calibration_batches(recipe, [str(c) for c in classes],
                                           spec.calibration_batches if spec is not None else 8))
    return quantize_onnx(src, dst, method=method, per_channel=per_channel, calibration=batches)


class _Batches:
    """onnxruntime's ``CalibrationDataReader``: one ``{input: batch}`` feed per call, ``None`` at the end."""

    def __init__(self, batches: Iterable[np.ndarray], name: str) -> None:
        self._batches: Iterator[np.ndarray] = iter(batches)
        self._name = name
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        self.count += 1
        return {self._name: np.ascontiguousarray(batch, dtype=np.float32)}

    def __len__(self) -> int:  # onnxruntime asks; unknown in advance
        return 0


def _input_name(model: Any) -> str:
    initializers = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    return names[0] if names else INPUT_NAME


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization logs and prints its progress; errors come back as exceptions instead."""
    chatter = io.StringIO()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            yield
    finally:
        root.setLevel(level)
