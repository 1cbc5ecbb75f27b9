"""ONNX export with torch's dynamo exporter, and its verification with onnxruntime.

The graph always computes in float32 on the CPU, whatever dtype and device the model has:
fp16/bf16 graphs often fail on onnxruntime CPU (pytorch #143643), and a float32 graph is
what every runtime runs. The input is called ``input`` (batch first, symbolic when
``dynamic_batch``), the output ``logits``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recipec._atomic import atomic_path
from recipec._files import check_regular, read_regular
from recipec.errors import CheckpointError, ExportError

__all__ = ["describe_onnx", "export_onnx", "onnx_session", "read_onnx", "verify_onnx"]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# A protobuf message cannot exceed 2 GiB; bigger models need external data files, which a
# single self-describing .onnx cannot hold.
_MAX_BYTES = 2 * 1024**3 - 64 * 1024**2
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    input_shape: tuple[int, ...],
    opset: int = 18,
    dynamic_batch: bool = True,
    metadata: Mapping[str, str] | None = None,
    arch: str | None = None,
) -> Path:
    """Export a model to one ONNX file, atomically, with ``metadata`` in its ``metadata_props``.

    The model is exported as a float32 CPU copy in eval mode (the model itself is left as it
    was): even when the export dtype is float16 or bfloat16 the ONNX graph is float32, because
    reduced-precision graphs often fail on onnxruntime CPU. The exporter's console output is
    swallowed; its message reappears in the error if it fails.

    Args:
        model: the network; its forward takes one image batch.
        path: the ``.onnx`` file to write.
        input_shape: an example input shape, batch first, e.g. ``(1, 3, 224, 224)``.
        opset: the ONNX opset version.
        dynamic_batch: leave the batch dimension symbolic (``batch``); else fixed at ``input_shape[0]``.
        metadata: str -> str entries for ``metadata_props`` (the recipe and provenance of an export).
        arch: the architecture's name for messages (default: the model's class name).

    Returns:
        ``path``.

    Raises:
        ExportError: the exporter failed, the model is over 2 GiB, the checker rejected the
            graph, or ``metadata`` is not str -> str; no file is left behind.

    Example:
        >>> export_onnx(model, "run/model.onnx", input_shape=(1, 3, 224, 224), metadata=meta)
        PosixPath('run/model.onnx')
    """
    import onnx  # noqa: PLC0415 (onnx: only when an ONNX file is written or read)

    target = Path(path)
    name = arch or type(model).__name__
    shape = _check_shape(input_shape)
    props = _check_metadata(metadata)
    size = sum(t.numel() * 4 for t in (*model.parameters(), *model.buffers()) if t.is_floating_point())
    if size > _MAX_BYTES:
        raise ExportError(
            f"ONNX export of {name}: {size / 1024**3:.1f} GiB of float32 weights; a single .onnx file holds "
            "at most 2 GiB (bigger ones need external data, which recipec does not write); "
            "export safetensors instead"
        )
    with _float32_cpu_eval(model) as net:
        program = _run_exporter(net, shape, opset=opset, dynamic_batch=dynamic_batch, name=name)
    proto = _at_opset(program.model_proto, opset, name)
    kept = [p for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    with atomic_path(target) as tmp:
        try:
            onnx.save(proto, str(tmp))
            onnx.checker.check_model(str(tmp))
        except (ValueError, onnx.checker.ValidationError) as exc:
            raise ExportError(f"ONNX export of {name}: the exported graph is not valid ONNX: {_first_lines(exc)}") from exc
    return target


def verify_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    input_shape: tuple[int, ...],
    atol: float = 1e-4,
    batch_sizes: Sequence[int] = (1, 3),
    seed: int = 0,
) -> dict[str, Any]:
    """Compare onnxruntime (CPU) outputs with the torch model's on random inputs.

    The torch side runs the same float32 CPU eval copy that :func:`export_onnx` exports. Each
    of ``batch_sizes`` is tried when the file's batch dimension is symbolic; a fixed batch
    dimension is tried at its own size only.

    Args:
        model: the network the file was exported from.
        path: the ``.onnx`` file.
        input_shape: the input shape, batch first; the batch entry is replaced by each batch size.
        atol: the largest absolute difference accepted.
        batch_sizes: batch sizes to run when the batch is dynamic.
        seed: seed of the random inputs (standard normal).

    Returns:
        ``{"max_abs_diff": float, "atol": float, "batch_sizes": [int, ...], "ok": True}``.

    Raises:
        ExportError: onnxruntime cannot load or run the file, an output has another shape, or
            the outputs differ by more than ``atol`` (NaN where torch has a number counts as beyond).
    """
    import numpy as np  # noqa: PLC0415 (with onnxruntime)
    import onnxruntime as ort  # noqa: PLC0415 (onnxruntime: only when an ONNX model runs)

    shape = _check_shape(input_shape)
    check_regular(path, what="ONNX file")  # onnxruntime would block on a FIFO
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings would reach the user's console
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"{path}: onnxruntime cannot load it: {_first_lines(exc)}") from exc
    feed = session.get_inputs()[0]
    fixed = feed.shape[0] if isinstance(feed.shape[0], int) else None
    sizes = [fixed] if fixed is not None else list(dict.fromkeys(batch_sizes))
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    with _float32_cpu_eval(model) as net, torch.no_grad():
        for batch in sizes:
            x = torch.randn((batch, *shape[1:]), generator=generator)
            out = net(x)
            expected = [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]
            try:
                got = session.run(None, {feed.name: x.numpy()})
            except Exception as exc:
                raise ExportError(f"{path}: onnxruntime failed at batch size {batch}: {_first_lines(exc)}") from exc
            for want, have in zip(expected, got):
                if want.shape != have.shape:
                    raise ExportError(f"{path}: onnxruntime output has shape {list(have.shape)} at batch size {batch}, "
                                      f"torch {list(want.shape)}; export again with dynamic_batch")
                if want.size:
                    diff = np.abs(have.astype(np.float64) - want.astype(np.float64))
                    worst = max(worst, float("inf") if np.isnan(diff).any() else float(diff.max()))
    if not worst <= atol:
        raise ExportError(
            f"{path}: ONNX parity check failed: onnxruntime and torch outputs differ by up to {worst:.3g}, "
            f"beyond atol {atol:g} (batch sizes {sizes}); raise export.onnx.atol if such a difference is "
            "acceptable for this model, or look for an op onnxruntime computes differently"
        )
    return {"max_abs_diff": worst, "atol": atol, "batch_sizes": sizes, "ok": True}


@contextlib.contextmanager
def _float32_cpu_eval(model: nn.Module) -> Iterator[nn.Module]:
    """The model as exported: float32, CPU, eval mode; the caller's model is restored or untouched."""
    tensors = (*model.parameters(), *model.buffers())
    if any(t.device.type != "cpu" or (t.is_floating_point() and t.dtype != torch.float32) for t in tensors):
        yield copy.deepcopy(model).to("cpu", torch.float32).eval()
        return
    # Restore each module's own flag: a fine-tuned model may keep frozen BatchNorm in eval mode.
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


def _run_exporter(model: nn.Module, shape: tuple[int, ...], *, opset: int, dynamic_batch: bool, name: str) -> Any:
    example = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    chatter = io.StringIO()
    try:
        # The exporter prints progress and logs guard failures; the user sees our message instead.
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.onnx.export(
                model, (example,), None, dynamo=True, verbose=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: "batch"},) if dynamic_batch else None,
            )
    except Exception as exc:
        raise ExportError(f"ONNX export of {name} failed: {_exporter_reason(exc)}") from exc


def _at_opset(proto: Any, opset: int, name: str) -> Any:
    """The graph at the requested opset: below 18 the exporter may silently keep 18."""
    import onnx  # noqa: PLC0415 (onnx: only when an ONNX file is written or read)

    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    if written == opset:
        return proto
    # The exporter converts before optimising, when axes are not constants yet, and keeps
    # opset 18 without a word when that fails; after optimisation the converter has a chance.
    try:
        converted = onnx.version_converter.convert_version(proto, opset)
        onnx.checker.check_model(converted)  # the converter can emit attributes the old opset lacks
    except Exception as exc:
        raise ExportError(f"ONNX export of {name}: torch's exporter writes opset {written} and onnx cannot convert "
                          f"this graph to opset {opset} ({_first_lines(exc, 1)}); set export.onnx.opset to "
                          f"{written} or higher") from exc
    return converted


def _exporter_reason(exc: BaseException) -> str:
    """The lines of an exporter error that say what went wrong, and where in the model."""
    text = _ANSI.sub("", str(exc))
    summary = re.search(r"## Exception summary\s*\n(.+?)(?:\n\s*\n|$)", text, re.DOTALL)
    reason = _first_lines(summary.group(1) if summary else text)
    where = re.search(r"The following call raised this error:\n\s*(.+)\n\s*(.+)", text)
    if where:
        reason += f" (at {where.group(1).strip()}: {where.group(2).strip()})"
    return reason


def _first_lines(exc: BaseException | str, count: int = 3) -> str:
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    return " ".join(lines[:count])[:600] or type(exc).__name__


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if not shape or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise ExportError(f"input_shape: expected positive ints, batch first (e.g. (1, 3, 224, 224)), got {input_shape!r}")
    return shape


def _check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, str]:
    wrong = [key for key, value in (metadata or {}).items() if not isinstance(key, str) or not isinstance(value, str)]
    if wrong:
        raise ExportError([f"metadata {key!r}: ONNX metadata_props hold str -> str; encode the value with json.dumps"
                           for key in wrong])
    return dict(metadata or {})


# --------------------------------------------------------------------------- reading ONNX files


def read_onnx(path: str | os.PathLike[str]) -> Any:
    """An ONNX file's ``ModelProto``, from a regular file, with every tensor inside it.

    ONNX is protobuf: parsing it runs nothing. A graph whose tensors live in external files is
    refused (recipec never writes one, and its references could name any file on the machine).

    Raises:
        CheckpointError: not a regular file, not ONNX, or with external data.
    """
    import onnx  # noqa: PLC0415 (onnx: only when an ONNX file is written or read)

    raw = read_regular(path, what="ONNX file", max_bytes=_MAX_BYTES + (64 << 20))
    try:
        proto = onnx.load_from_string(raw)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise CheckpointError(f"{path}: not an ONNX file ({_first_lines(exc, 1)})") from exc
    if not proto.HasField("graph"):
        raise CheckpointError(f"{path}: not an ONNX model (no graph)")
    external = [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise CheckpointError(f"{path}: its tensors live in external files ({', '.join(external[:3])}...); "
                              "recipec reads only self-contained .onnx files")
    return proto


def onnx_session(path: str | os.PathLike[str], *, threads: int | None = None) -> Any:
    """An onnxruntime CPU session of a self-contained ONNX file (checked by :func:`read_onnx`); ``threads``:
    intra-op threads (default: onnxruntime's, one per physical core).

    Raises:
        CheckpointError: the file is refused by :func:`read_onnx` or onnxruntime cannot load it.
    """
    import onnxruntime as ort  # noqa: PLC0415 (onnxruntime: only when an ONNX model runs)

    proto = read_onnx(path)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise CheckpointError(f"{path}: onnxruntime cannot load it: {_first_lines(exc)}") from exc


def describe_onnx(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What an ONNX file holds: inputs and outputs (symbolic dimensions by name), opsets, producer, metadata.

    Returns:
        ``path``, ``format`` (``"onnx"``), ``ir_version``, ``producer`` ({name, version}),
        ``opset`` ({domain: version}; ``""`` is the default domain), ``inputs`` and ``outputs``
        (each ``{name, dtype, shape}``, a symbolic dimension as its name, an unknown one as None),
        ``initializers``, ``parameters`` (their elements), ``total_bytes``, ``nodes`` and ``metadata``.
    """
    import onnx  # noqa: PLC0415 (onnx: only when an ONNX file is written or read)

    proto = read_onnx(path)
    graph = proto.graph
    inits = {t.name for t in graph.initializer}

    def value(v: Any) -> dict[str, Any]:
        tensor = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else None
        return {"name": v.name, "dtype": dtype, "shape": dims}

    numel = [int(_prod(t.dims)) for t in graph.initializer]
    sizes = [n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize for n, t in zip(numel, graph.initializer)]
    return {
        "path": str(path), "format": "onnx", "ir_version": proto.ir_version,
        "producer": {"name": proto.producer_name, "version": proto.producer_version},
        "opset": {o.domain: o.version for o in proto.opset_import},
        "inputs": [value(v) for v in graph.input if v.name not in inits],
        "outputs": [value(v) for v in graph.output],
        "initializers": len(graph.initializer), "parameters": sum(numel), "total_bytes": sum(sizes),
        "nodes": len(graph.node),
        "metadata": {p.key: p.value for p in proto.metadata_props},
    }


def _prod(dims: Sequence[int]) -> int:
    n = 1
    for d in dims:
        n *= d
    return n
