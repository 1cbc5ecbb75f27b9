"""What a checkpoint holds: tensors, shapes, dtypes, sizes and metadata, as JSON and as text.

safetensors are read from their headers alone; torch files through the safe loader (mmap).
Sizes are logical: a tied weight counts under each of its names, as ``load`` returns it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from recipec._terminal import escape
from recipec.weights.formats import _resolve, _safetensors_reader, _sharded_layout, _sniff, load

__all__ = ["format_inspect", "inspect_checkpoint"]

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "C64": torch.complex64,
}  # fmt: skip
_LARGEST = 10


def inspect_checkpoint(path: str | PathLike[str], *, allow_globals: Sequence[str] = ()) -> dict[str, Any]:
    """Describe a checkpoint without building a model.

    Args:
        path: any file or directory ``formats.load`` accepts.
        allow_globals: pickle globals a torch file may contain (see ``formats.load``).

    Returns:
        A JSON-serialisable report: ``path``, ``format``, ``files``, ``state_dict_key``,
        ``tensors`` (count), ``total_bytes``, ``parameters`` (elements), ``dtypes``
        (dtype -> count), ``largest`` (top 10 ``{key, shape, dtype, bytes}``), ``keys``
        (every ``{key, shape, dtype}``, plus ``alias_of`` for a tied name stored once,
        ``device: "meta"`` for a tensor without data, ``layout`` for a sparse one),
        ``unusable`` (the keys of meta and sparse tensors, which ``formats.load`` refuses) and
        ``metadata``. It may hold NaN (metadata): write it with ``recipec._json.dumps``.

    Raises:
        CheckpointError: as ``formats.load``.

    Example:
        >>> report = inspect_checkpoint("model.safetensors")
        >>> print(format_inspect(report))
    """
    file = _resolve(path)
    fmt = _sniff(file)
    if fmt.startswith("safetensors"):
        entries, metadata, files = _safetensors_entries(file, sharded=fmt == "safetensors-sharded")
        key = ""
    else:
        ckpt = load(file, allow_globals=allow_globals, mmap=True, check=False)  # describe meta and sparse tensors
        fmt, key, metadata, files = ckpt.format, ckpt.key, ckpt.metadata, ckpt.files
        entries = [_torch_entry(name, t) for name, t in ckpt.state_dict.items()]
    largest = sorted(entries, key=lambda e: -e["bytes"])[:_LARGEST]
    return {
        "path": str(path),
        "format": fmt,
        "files": [str(f) for f in files],
        "state_dict_key": key,
        "tensors": len(entries),
        "total_bytes": sum(e["bytes"] for e in entries),
        "parameters": sum(_numel(e["shape"]) for e in entries),
        "dtypes": dict(sorted(Counter(e["dtype"] for e in entries).items(), key=lambda item: (-item[1], item[0]))),
        "largest": [{k: e[k] for k in ("key", "shape", "dtype", "bytes")} for e in largest],
        "keys": [{k: v for k, v in e.items() if k != "bytes"} for e in entries],
        "unusable": [e["key"] for e in entries if "device" in e or "layout" in e],
        "metadata": _jsonable(metadata),
    }


def _safetensors_entries(file: Path, *, sharded: bool) -> tuple[list[dict[str, Any]], dict[str, Any], list[Path]]:
    shards: dict[Path, list[str] | None] = {file: None}
    metadata: dict[str, str] = {}
    if sharded:
        layout, metadata = _sharded_layout(file)
        shards = dict(layout)
    entries: dict[str, dict[str, Any]] = {}
    for shard, names in shards.items():
        with _safetensors_reader(shard) as reader:
            if not sharded:
                metadata = dict(reader.metadata() or {})
            for name in names if names is not None else reader.keys():
                view = reader.get_slice(name)  # header only: no tensor data is read
                shape, dtype = list(view.get_shape()), _SAFETENSORS_DTYPES.get(view.get_dtype())
                itemsize = dtype.itemsize if dtype is not None else 0
                entries[name] = {
                    "key": name,
                    "shape": shape,
                    "dtype": _dtype_name(dtype) if dtype is not None else view.get_dtype(),
                    "bytes": _numel(shape) * itemsize,
                }
    for alias, kept in metadata.items():
        if alias not in entries and kept in entries:
            entries[alias] = {**entries[kept], "key": alias, "alias_of": kept}
    files = [file, *shards] if sharded else [file]
    return list(entries.values()), metadata, files


def _torch_entry(name: str, tensor: torch.Tensor) -> dict[str, Any]:
    """One tensor's row; a meta tensor holds no bytes, a sparse one says its layout (``load`` refuses both)."""
    entry: dict[str, Any] = {"key": name, "shape": list(tensor.shape), "dtype": _dtype_name(tensor.dtype),
                             "bytes": 0 if tensor.is_meta else tensor.numel() * tensor.element_size()}
    if tensor.is_meta:
        entry["device"] = "meta"
    if tensor.layout != torch.strided:
        entry["layout"] = str(tensor.layout).removeprefix("torch.")
    return entry


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _numel(shape: Sequence[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def format_inspect(report: dict[str, Any]) -> str:
    """Render an ``inspect_checkpoint`` report as compact plain text for a terminal."""
    key = report["state_dict_key"]
    lines = [
        f"{report['path']}  ({report['format']}" + (f", state dict at {key!r})" if key else ")"),
        f"files:      {len(report['files'])}" + (f"  ({report['files'][0]} ...)" if len(report["files"]) > 1 else ""),
        f"tensors:    {report['tensors']:,}",
        f"parameters: {report['parameters']:,} ({_human_count(report['parameters'])})",
        f"size:       {_human_bytes(report['total_bytes'])}",
        "dtypes:     " + (", ".join(f"{d} x{n}" for d, n in report["dtypes"].items()) or "none"),
    ]
    if report.get("unusable"):
        shown = ", ".join(escape(repr(k)) for k in report["unusable"][:_LARGEST])
        more = f" and {len(report['unusable']) - _LARGEST} more" if len(report["unusable"]) > _LARGEST else ""
        lines.append(f"unusable:   {len(report['unusable'])} meta or sparse tensors, which load refuses: {shown}{more}")
    if report["largest"]:
        rows = [(escape(repr(e["key"])[1:-1]), "x".join(map(str, e["shape"])) or "scalar", e["dtype"],
                 _human_bytes(e["bytes"])) for e in report["largest"]]  # fmt: skip
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines.append("largest tensors:")
        lines += [f"  {k:<{widths[0]}}  {s:<{widths[1]}}  {d:<{widths[2]}}  {b:>10}" for k, s, d, b in rows]
    if report["metadata"]:
        lines.append("metadata:")
        for name, value in report["metadata"].items():
            text = " ".join((value if isinstance(value, str) else repr(value)).split())
            text = escape(text if len(text) <= 80 else text[:77] + "...", newlines=False)
            lines.append(f"  {escape(name, newlines=False)}: {text}")
    return escape("\n".join(lines))  # the path, and anything else a file could name


def _human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _human_count(count: int) -> str:
    for threshold, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= threshold:
            return f"{count / threshold:.1f}{suffix}"
    return str(count)
