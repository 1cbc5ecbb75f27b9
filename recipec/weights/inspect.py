"""What a checkpoint holds: tensors, shapes, dtypes, sizes and metadata, as JSON and as text.

safetensors are read from their headers alone; torch files through the safe loader (mmap).
Sizes are logical: a tied weight counts under each of its names, as ``load`` returns it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from recipec._terminal import escape
from recipec.errors import CheckpointError
from recipec.provenance import PROVENANCE_KEY, RECIPE_KEY, read_export_metadata
from recipec.weights._safetensors import safetensors_reader, sharded_layout
from recipec.weights.formats import load
from recipec.weights import pt2
from recipec.weights.onnx import describe_onnx
from recipec.weights.raw import resolve_file, sniff_format

__all__ = ["export_summary", "format_inspect", "inspect_checkpoint"]

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
        ``unusable`` (the keys of meta and sparse tensors, which ``formats.load`` refuses),
        ``beside`` (tensors outside the state dict by top-level key, ``{key, tensors, bytes,
        optimizer}``: optimizer state, the non-EMA copy of the weights...) and ``metadata``. It may hold NaN (metadata): write it with ``recipec._json.dumps``.

    Raises:
        CheckpointError: as ``formats.load``.

    Example:
        >>> report = inspect_checkpoint("model.safetensors")
        >>> print(format_inspect(report))
    """
    if Path(path).suffix == ".onnx" and not Path(path).is_dir():
        report = describe_onnx(path)
        return report | {"recipec": export_summary(report["metadata"])}
    if Path(path).suffix == pt2.SUFFIX and not Path(path).is_dir():  # checked first: no Python from the file runs
        report = pt2.describe_pt2(path)
        return report | {"recipec": export_summary(report["metadata"])}
    file = resolve_file(path)
    fmt = sniff_format(file)
    beside: list[dict[str, Any]] = []
    if fmt.startswith("safetensors"):
        entries, metadata, files = _safetensors_entries(file, sharded=fmt == "safetensors-sharded")
        key = ""
    else:
        ckpt = load(file, allow_globals=allow_globals, mmap=True, check=False)  # describe meta and sparse tensors
        fmt, key, metadata, files, beside = ckpt.format, ckpt.key, ckpt.metadata, ckpt.files, ckpt.beside
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
        "beside": [{**b, "optimizer": "optim" in b["key"].lower()} for b in beside],
        "metadata": _jsonable(metadata),
        "recipec": export_summary(metadata),
    }


def export_summary(metadata: Mapping[str, Any]) -> dict[str, Any] | None:
    """A recipec export's recipe and provenance, read out of its metadata (None for other files).

    Returns:
        ``provenance`` (the whole object) and a digest for people: ``name``, ``arch``, ``weights``,
        ``source`` ({checkpoint, sha256}), ``classes``, ``in_channels``, ``image_size``, ``resize``
        (one line), ``normalization``, ``epochs_trained``, ``final_metrics``, ``selection`` (which
        epoch's weights were exported and why, when recorded), ``time``, ``versions``; or ``error``
        when the recipec metadata is damaged.
    """
    if RECIPE_KEY not in metadata and PROVENANCE_KEY not in metadata:
        return None
    try:
        recipe_yaml, prov = read_export_metadata({k: v for k, v in metadata.items() if isinstance(v, str)})
    except CheckpointError as exc:
        return {"error": exc.problems[0]}
    data: dict[str, Any] = prov["data"] if isinstance(prov.get("data"), dict) else {}
    base: dict[str, Any] = prov["base_model"] if isinstance(prov.get("base_model"), dict) else {}
    resize: dict[str, Any] = data["resize"] if isinstance(data.get("resize"), dict) else {}
    return {
        "name": prov.get("name"), "arch": base.get("arch"), "weights": base.get("weights"),
        "source": prov.get("source"), "classes": prov.get("classes"),
        "in_channels": data.get("in_channels"), "image_size": data.get("image_size"),
        "resize": resize.get("summary") or _resize_line(resize),
        "normalization": prov.get("normalization"), "epochs_trained": prov.get("epochs_trained"),
        "final_metrics": prov.get("final_metrics"), "selection": prov.get("selection"),
        "time": prov.get("time"), "versions": {k: v for k, v in (prov.get("versions") or {}).items()
                                                if k in ("recipec", "torch", "torchvision", "timm")},
        "has_recipe": recipe_yaml is not None, "provenance": prov,
    }


def _resize_line(resize: Mapping[str, Any]) -> str | None:
    if not resize:
        return None
    size = resize.get("image_size")
    if resize.get("rule") == "shorter_side":
        return (f"shorter side to {resize.get('resize_size')} ({resize.get('interpolation')}), "
                f"centre crop {size}x{size}")
    return f"{size}x{size} square resize (bilinear)"


def _safetensors_entries(file: Path, *, sharded: bool) -> tuple[list[dict[str, Any]], dict[str, Any], list[Path]]:
    shards: dict[Path, list[str] | None] = {file: None}
    metadata: dict[str, str] = {}
    if sharded:
        layout, metadata = sharded_layout(file)
        shards = dict(layout)
    entries: dict[str, dict[str, Any]] = {}
    for shard, names in shards.items():
        with safetensors_reader(shard) as reader:
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
    summary = _summary_lines(report.get("recipec"))
    if report["format"] == "onnx":
        return escape("\n".join([*_onnx_lines(report), *summary,
                                  *_metadata_lines(report["metadata"], digested=bool(summary))]))
    if report["format"] == "pt2":
        return escape("\n".join([*_pt2_lines(report), *summary,
                                  *_metadata_lines(report["metadata"], digested=bool(summary))]))
    key = report["state_dict_key"]
    beside = report.get("beside") or []
    lines = [
        f"{report['path']}  ({report['format']}" + (f", state dict at {key!r})" if key else ")"),
        f"files:      {len(report['files'])}" + (f"  ({report['files'][0]} ...)" if len(report["files"]) > 1 else ""),
        f"tensors:    {report['tensors']:,}",
        f"parameters: {report['parameters']:,} ({_human_count(report['parameters'])})",
        f"size:       {_human_bytes(report['total_bytes'])}" + (
            f" (the state dict; {_human_bytes(report['total_bytes'] + sum(b['bytes'] for b in beside))} of tensors "
            "in all)" if beside else ""),
        "dtypes:     " + (", ".join(f"{d} x{n}" for d, n in report["dtypes"].items()) or "none"),
    ]
    lines += [f"beside:     {escape(repr(b['key']))}{' (optimizer state)' if b['optimizer'] else ''}: "
              f"{b['tensors']:,} tensors, {_human_bytes(b['bytes'])}" for b in beside]
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
    lines += summary
    lines += _metadata_lines(report["metadata"], digested=bool(summary))
    return escape("\n".join(lines))  # the path, and anything else a file could name


def _metadata_lines(metadata: Mapping[str, Any], *, digested: bool) -> list[str]:
    """Metadata entries, one line each (80 characters). recipec's recipe and provenance are named, not
    printed: ``digested`` when the summary above shows them (an export), else (a features file, which
    carries its model's recipe alone) with their size."""
    ours = [k for k in (RECIPE_KEY, PROVENANCE_KEY) if isinstance(metadata.get(k), str)]
    lines = ["metadata:"] if metadata else []
    for name, value in metadata.items():
        if name in ours:
            continue
        text = " ".join((value if isinstance(value, str) else repr(value)).split())
        text = escape(text if len(text) <= 80 else text[:77] + "...", newlines=False)
        lines.append(f"  {escape(name, newlines=False)}: {text}")
    if ours and digested:
        lines.append(f"  {', '.join(ours)}: shown above (--json prints {'them' if len(ours) > 1 else 'it'} whole)")
    elif ours:
        lines += [f"  {name}: " + (f"the model's recipe, {len(metadata[name].splitlines())} lines" if name == RECIPE_KEY
                                   else f"{len(metadata[name]):,} characters of JSON") + " (--json prints it whole)"
                  for name in ours]
    return lines


def _summary_lines(summary: Mapping[str, Any] | None) -> list[str]:
    """The readable provenance view of a recipec export."""
    if not summary:
        return []
    if "error" in summary:
        return [f"recipec export: {escape(str(summary['error']), newlines=False)}"]
    if not summary.get("provenance"):
        return []  # a recipe alone (a features file): nothing to digest, and no empty heading

    def line(label: str, value: Any) -> None:
        if value not in (None, "", [], {}):
            lines.append(f"  {label + ':':<15}{escape(str(value), newlines=False)}")

    lines = ["recipec export:"]
    line("name", summary.get("name"))
    model = summary.get("arch")
    line("model", f"{model}" + (f", weights {summary['weights']}" if summary.get("weights") else ", random init"
                                ) if model else None)
    source = summary.get("source") or {}
    if isinstance(source, dict) and source.get("checkpoint"):
        line("source", f"{source['checkpoint']}" + (f" (sha256 {source['sha256']})" if source.get("sha256") else ""))
    classes = summary.get("classes") or []
    if isinstance(classes, list) and classes:
        shown = ", ".join(map(str, classes[:20])) + (f" and {len(classes) - 20} more" if len(classes) > 20 else "")
        line("classes", f"{len(classes)}: {shown}")
    if summary.get("image_size"):
        line("input", f"{summary.get('in_channels') or 3} x {summary['image_size']} x {summary['image_size']}")
    line("resize", summary.get("resize"))
    norm = summary.get("normalization")
    if isinstance(norm, dict):
        line("normalisation", f"mean {_short(norm.get('mean'))}, std {_short(norm.get('std'))}")
    elif "normalization" in (summary.get("provenance") or {}):
        line("normalisation", "none")
    line("epochs", summary.get("epochs_trained"))
    final = {k: v for k, v in (summary.get("final_metrics") or {}).items() if v is not None}
    line("final metrics", ", ".join(f"{k} {_short(v)}" for k, v in final.items()))
    selection = summary.get("selection")
    if isinstance(selection, dict):
        text = f"{selection.get('weights')} weights"
        if selection.get("epoch") is not None:
            text += f" of epoch {selection['epoch']}"
        if selection.get("metric"):
            value = selection.get("value")
            text += f" ({selection['metric']} {_short(value) if value is not None else '-'}, {selection.get('mode')})"
        if selection.get("note"):
            text += f"; {selection['note']}"
        line("exported", text)
    line("trained", summary.get("time"))
    line("versions", ", ".join(f"{k} {v}" for k, v in (summary.get("versions") or {}).items()))
    return lines


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)


def _onnx_lines(report: dict[str, Any]) -> list[str]:
    def shape(dims: list[Any]) -> str:
        return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"

    producer = report["producer"]
    opsets = ", ".join(f"{domain or 'ai.onnx'} {version}" for domain, version in report["opset"].items())
    lines = [f"{report['path']}  (onnx, IR version {report['ir_version']})",
             f"producer:   {producer['name']} {producer['version']}".rstrip(),
             f"opset:      {opsets}",
             f"nodes:      {report['nodes']:,}",
             f"weights:    {report['initializers']:,} initializers, {report['parameters']:,} values "
             f"({_human_bytes(report['total_bytes'])})"]
    for kind in ("inputs", "outputs"):
        lines.append(f"{kind}:")
        lines += [f"  {v['name']}: {v['dtype']} {shape(v['shape'])}" for v in report[kind]]
    return lines


def _pt2_lines(report: dict[str, Any]) -> list[str]:
    ops = sorted(report["operators"].items(), key=lambda kv: -kv[1])
    lines = [f"{report['path']}  (pt2, torch.export)",
             f"weights:    {report['tensors']:,} tensors, {report['parameters']:,} values "
             f"({_human_bytes(report['total_bytes'])})",
             f"operators:  {sum(report['operators'].values()):,} calls of {len(ops)}: "
             + ", ".join(f"{name.removeprefix('aten.')} {n}" for name, n in ops[:8]) + (" ..." if len(ops) > 8 else ""),
             "inputs:"]
    lines += [f"  {v['name']}: [" + ", ".join(str(d) for d in v["shape"]) + "]" for v in report["inputs"]]
    return lines


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
