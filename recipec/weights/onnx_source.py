"""An ONNX file as a source of weights: its initializers as tensors, under their own names.

``recipec convert model.onnx model.safetensors`` (and ``source.checkpoint: model.onnx``) read the
graph's initializers through :func:`recipec.weights.onnx.read_onnx` (protobuf: parsing runs
nothing; external data is refused) and the file's ``metadata_props`` as metadata. Names stay as
the exporter wrote them: torch's exporter keeps a module's parameter names (``layer1.0.conv1.weight``),
while constants it made up (folded batch norms, shapes) carry names of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from recipec.errors import CheckpointError
from recipec.weights.onnx import read_onnx

__all__ = ["load"]

# ONNX TensorProto.DataType -> torch
_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 4: torch.uint16, 5: torch.int16, 6: torch.int32,
           7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64, 12: torch.uint32, 13: torch.uint64,
           14: torch.complex64, 15: torch.complex128, 16: torch.bfloat16, 17: torch.float8_e4m3fn,
           19: torch.float8_e5m2}


def load(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The initializers of an ONNX graph as tensors (name -> tensor), and its ``metadata_props``.

    Raises:
        CheckpointError: not an ONNX file, external data, no initializers, an initializer of a
            type torch has no dtype for, or two initializers of one name.
    """
    from onnx import numpy_helper  # noqa: PLC0415 (onnx: only when an ONNX file is read)

    proto = read_onnx(file)
    state: dict[str, torch.Tensor] = {}
    problems = []
    for init in proto.graph.initializer:
        dtype = _DTYPES.get(init.data_type)
        if dtype is None:
            problems.append(f"{file}: initializer {init.name!r} has ONNX data type {init.data_type}, which torch has "
                            "no dtype for")
        elif init.name in state:
            problems.append(f"{file}: two initializers are named {init.name!r}")
        else:
            state[init.name] = _tensor(numpy_helper.to_array(init), dtype, tuple(init.dims))
    if not state and not problems:
        problems.append(f"{file}: the ONNX graph has no initializers: it holds no weights to read")
    if problems:
        raise CheckpointError(problems)
    return state, {p.key: p.value for p in proto.metadata_props}


def _tensor(array: Any, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """The array's bytes as a torch tensor (numpy has no bfloat16 or float8 of its own: ``onnx`` uses ml_dtypes)."""
    data = array.reshape(-1).copy().view("uint8")  # a writable copy, little-endian as numpy_helper returns it
    return torch.from_numpy(data).view(dtype).reshape(shape)
