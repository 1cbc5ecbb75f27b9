"""Distributed checkpoints (DCP): a directory of ``.metadata`` and ``__R_S.distcp`` files, as
``torch.distributed.checkpoint.save`` writes them (FSDP, torchtitan).

``.metadata`` is a pickle of DCP's own dataclasses. It is read by an unpickler that knows the
names of those classes alone (the list below, taken from the globals of real files) and builds a
plain :class:`_Record` for each, never the class itself: nothing a file names is imported, and
no code of the file runs; any other global is refused. Each tensor chunk in a ``.distcp`` file is
a ``torch.save`` stream, read with ``torch.load(weights_only=True)`` from the byte range the
metadata gives (as ``FileSystemReader`` reads it, whose own ``.metadata`` reading is a plain
``pickle.load``); the chunks of a tensor sharded over ranks are put back together by their offsets.
Values that are not tensors (an epoch, optimizer hyper-parameters) are pickles too, which
``torch.load`` reads only with ``weights_only=False``: here they are read weights-only, and those
that are not plain data are left out.

The flattened names (``model.layer1.0.weight``) are nested again as the save planner recorded them
(``("model", "layer1.0.weight")``), so the state dict is found as in a torch file (``model``,
``state_dict``...).
"""

from __future__ import annotations

import io
import math
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeGuard

import torch

from recipec._files import check_regular, open_regular, read_regular
from recipec.errors import CheckpointError, UnsafeCheckpointError

__all__ = ["METADATA", "load"]

METADATA = ".metadata"
_MAX_METADATA = 1 << 30  # the metadata of a 400B-parameter model sharded over 2,000 ranks is a few hundred MB
_MAX_DEPTH = 64  # nesting of a saved state (model.layers.0...: a few levels)
_DCP = "torch.distributed.checkpoint."
# Every global a DCP .metadata names, found with pickletools in files torch 2.14's FileSystemWriter wrote.
_RECORDS = frozenset(_DCP + name for name in (
    "metadata.Metadata", "metadata.TensorStorageMetadata", "metadata.BytesStorageMetadata",
    "metadata.ChunkStorageMetadata", "metadata.TensorProperties", "metadata.MetadataIndex", "metadata.StorageMeta",
    "filesystem._StorageInfo"))


class _Record:
    """One DCP metadata object as data: ``kind`` (its class name) and the state pickle gave it."""

    kind = ""
    state: Any = None

    def __init__(self, *args: Any) -> None:
        self.state = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def get(self, name: str, default: Any = None) -> Any:
        return self.state.get(name, default) if isinstance(self.state, dict) else default


_KINDS = {name: type(name.rpartition(".")[2], (_Record,), {"kind": name.rpartition(".")[2]}) for name in _RECORDS}


def _size(*args: Any) -> tuple[int, ...]:
    """``torch.Size(dims)``, as a tuple of ints."""
    dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else None
    if dims is None or not all(type(d) is int and d >= 0 for d in dims):
        raise pickle.UnpicklingError(f"torch.Size of {args!r:.80}: not a list of sizes")
    return tuple(dims)


def _plain(kind: type) -> Any:
    def make(*args: Any) -> Any:
        if len(args) != 1 or not isinstance(args[0], kind):
            raise pickle.UnpicklingError(f"expected one {kind.__name__}, got {args!r:.80}")
        return args[0]
    return make


def _path(*parts: Any) -> str:
    if not all(isinstance(p, str) for p in parts):
        raise pickle.UnpicklingError(f"a path of {parts!r:.80}")
    return os.path.join(*parts) if parts else ""


class _Constructor:
    """A callable the pickle may call (REDUCE) and nothing else: pickle's BUILD, which would set attributes on
    a plain function, is refused."""

    __slots__ = ("_make",)

    def __init__(self, make: Any) -> None:
        self._make = make

    def __call__(self, *args: Any) -> Any:
        return self._make(*args)

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("a state for a constructor, which DCP metadata never holds")


_FUNCTIONS: dict[str, _Constructor] = {
    "torch.Size": _Constructor(_size),
    "torch.serialization._get_layout": _Constructor(_plain(str)),  # "torch.strided": deprecated, never used here
    _DCP + "metadata._MEM_FORMAT_ENCODING": _Constructor(_plain(int)),
    **dict.fromkeys((f"pathlib.{name}" for name in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath",
                                                      "Path")), _Constructor(_path)),
}


class _MetadataUnpickler(pickle.Unpickler):
    """An unpickler of DCP metadata: DCP's classes become records, a few constructors plain values, dtypes dtypes."""

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if full in _KINDS:
            return _KINDS[full]
        if full in _FUNCTIONS:
            return _FUNCTIONS[full]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)  # a dtype is a value, not a callable
        raise _Refused(full)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("a persistent id, which DCP metadata never holds")


class _Refused(pickle.UnpicklingError):
    pass


def load(metadata: Path) -> tuple[dict[str, Any], list[Path]]:
    """Read a DCP checkpoint: its tensors and plain values, nested as they were saved.

    Args:
        metadata: the ``.metadata`` file of the checkpoint directory.

    Returns:
        The saved state (``{"model": {...}, "optimizer": {...}, "epoch": 3}`` as saved; flat names
        when the planner recorded no nesting) and the files read: ``.metadata``, then the data files.

    Raises:
        UnsafeCheckpointError: ``.metadata`` names a global that is not DCP's own metadata.
        CheckpointError: a damaged or truncated checkpoint, a data file that is missing, or a
            checkpoint written with a storage extension (compression) recipec does not read.
    """
    meta = _read_metadata(metadata)
    directory = metadata.parent
    entries = meta.get("state_dict_metadata")
    storage = meta.get("storage_data")
    if not isinstance(entries, dict) or not isinstance(storage, dict):
        raise CheckpointError(f"{metadata}: not DCP metadata (no state_dict_metadata and storage_data)")
    where: dict[tuple[str, tuple[int, ...] | None], dict[str, Any]] = {}
    for index, info in storage.items():
        if not (isinstance(index, _Record) and isinstance(info, _Record) and isinstance(info.state, dict)):
            raise CheckpointError(f"{metadata}: damaged DCP metadata (storage_data entry {index!r:.80})")
        offset = index.get("offset")
        if not isinstance(index.get("fqn"), str) or not (offset is None or _ints(offset)):
            raise CheckpointError(f"{metadata}: damaged DCP metadata (storage_data entry {index.state!r:.80})")
        where[(index.get("fqn"), offset)] = info.state
    files: dict[str, Path] = {}
    flat: dict[str, Any] = {}
    for fqn, entry in entries.items():
        if not isinstance(fqn, str) or not isinstance(entry, _Record):
            raise CheckpointError(f"{metadata}: damaged DCP metadata (entry {fqn!r:.80})")
        if entry.kind == "BytesStorageMetadata":
            value = _read_value(directory, fqn, where.get((fqn, None)), files, metadata)
            if value is not _LEFT_OUT:
                flat[fqn] = value
        elif entry.kind == "TensorStorageMetadata":
            flat[fqn] = _read_tensor(directory, fqn, entry, where, files, metadata)
        else:
            raise CheckpointError(f"{metadata}: damaged DCP metadata ({fqn!r} is a {entry.kind})")
    return _nested(flat, meta.get("planner_data")), [metadata, *sorted(files.values())]


def _read_metadata(metadata: Path) -> _Record:
    data = read_regular(metadata, what="DCP metadata", max_bytes=_MAX_METADATA)
    try:
        meta = _MetadataUnpickler(io.BytesIO(data)).load()
    except _Refused as exc:
        error = UnsafeCheckpointError(
            f"{metadata}: refused to unpickle {exc}: DCP metadata holds DCP's own metadata classes alone, and "
            "unpickling anything else could run code; nothing in the file was executed")
        error.refused = [str(exc)]
        raise error from None
    except Exception as exc:  # a truncated or damaged pickle: EOFError, UnpicklingError, ValueError...
        raise CheckpointError(f"{metadata}: damaged DCP metadata ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(meta, _Record) or meta.kind != "Metadata":
        raise CheckpointError(f"{metadata}: not DCP metadata (it holds a {type(meta).__name__})")
    return meta


def _chunk_bytes(directory: Path, fqn: str, info: dict[str, Any] | None, files: dict[str, Path], metadata: Path) -> bytes:
    """The bytes of one stored item, from the data file and range the metadata gives."""
    if info is None:
        raise CheckpointError(f"{metadata}: {fqn!r} has no storage entry; the checkpoint is incomplete")
    if info.get("transform_descriptors"):
        raise CheckpointError(f"{metadata}: {fqn!r} is stored with {info['transform_descriptors']!r} (a DCP storage "
                              "extension); recipec reads plain DCP checkpoints: load it with "
                              "torch.distributed.checkpoint and save it again without extensions")
    name, offset, length = info.get("relative_path"), info.get("offset"), info.get("length")
    if not (isinstance(name, str) and name and Path(name).name == name and name not in (".", "..")
            and type(offset) is int and type(length) is int and offset >= 0 and length >= 0):
        raise CheckpointError(f"{metadata}: damaged DCP metadata (storage of {fqn!r}: {info!r:.120})")
    file = files.get(name)
    if file is None:
        file = directory / name
        if not file.exists():
            raise CheckpointError(f"{metadata}: data file {name!r} does not exist (it holds {fqn!r})")
        check_regular(file, what="DCP data file")
        files[name] = file
    with open_regular(file, what="DCP data file") as f:
        data = os.pread(f.fileno(), length, offset)
    if len(data) != length:
        raise CheckpointError(f"{file}: ends before the bytes of {fqn!r} (at {offset:,}, {length:,} bytes): "
                              "truncated")
    return data


def _torch_load(data: bytes) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _read_tensor(directory: Path, fqn: str, entry: _Record, where: Mapping[tuple[str, Any], dict[str, Any]],
                 files: dict[str, Path], metadata: Path) -> torch.Tensor:
    properties, size, chunks = entry.get("properties"), entry.get("size"), entry.get("chunks")
    state = properties.state if isinstance(properties, _Record) else None
    # (dtype, layout, requires_grad, memory format, pin_memory) since torch 2.1; a dict of them before
    dtype = state[0] if isinstance(state, tuple) and state else state.get("dtype") if isinstance(state, dict) else None
    if not (isinstance(dtype, torch.dtype) and _ints(size) and isinstance(chunks, list)):
        raise CheckpointError(f"{metadata}: damaged DCP metadata (tensor {fqn!r})")
    pieces = []
    for chunk in chunks:
        offsets = chunk.get("offsets") if isinstance(chunk, _Record) else None
        sizes = chunk.get("sizes") if isinstance(chunk, _Record) else None
        if not (_ints(offsets) and _ints(sizes) and len(offsets) == len(sizes) == len(size)
                and all(o + s <= n for o, s, n in zip(offsets, sizes, size))):
            raise CheckpointError(f"{metadata}: damaged DCP metadata (a chunk of {fqn!r} outside its {list(size)})")
        data = _chunk_bytes(directory, fqn, where.get((fqn, offsets)), files, metadata)
        try:
            piece = _torch_load(data)
        except Exception as exc:
            raise CheckpointError(f"{metadata}: the bytes of {fqn!r} are not a tensor torch can read "
                                  f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
        if not isinstance(piece, torch.Tensor) or tuple(piece.shape) != sizes or piece.dtype != dtype:
            got = f"{piece.dtype} {list(piece.shape)}" if isinstance(piece, torch.Tensor) else type(piece).__name__
            raise CheckpointError(f"{metadata}: {fqn!r}: the data file holds {got} where the metadata says "
                                  f"{dtype} {list(sizes)}")
        pieces.append((offsets, piece))
    if sum(math.prod(p.shape) for _, p in pieces) != math.prod(size):
        raise CheckpointError(f"{metadata}: the chunks of {fqn!r} do not make up its {list(size)}; the checkpoint "
                              "is incomplete")
    if len(pieces) == 1:
        return pieces[0][1]
    whole = torch.empty(size, dtype=dtype)
    for offsets, piece in pieces:
        whole[tuple(slice(o, o + n) for o, n in zip(offsets, piece.shape))] = piece
    return whole


def _ints(value: Any) -> TypeGuard[tuple[int, ...]]:
    """A shape or an offset: what ``_size`` made of a ``torch.Size``."""
    return isinstance(value, tuple) and all(type(v) is int and v >= 0 for v in value)


_LEFT_OUT = object()


def _read_value(directory: Path, fqn: str, info: dict[str, Any] | None, files: dict[str, Path],
                metadata: Path) -> Any:
    """A non-tensor value, read weights-only; ``_LEFT_OUT`` when it is not plain data."""
    data = _chunk_bytes(directory, fqn, info, files, metadata)
    try:
        return _torch_load(data)
    except Exception:  # an object a weights-only load refuses: never unpickled, left out
        return _LEFT_OUT


def _nested(flat: dict[str, Any], planner: Any) -> dict[str, Any]:
    """The saved nesting back (``"model.fc.weight"`` -> ``{"model": {"fc.weight": ...}}``), where recorded."""
    if not isinstance(planner, dict) or not all(
            isinstance(p, tuple) and 0 < len(p) <= _MAX_DEPTH and all(type(k) in (str, int) for k in p)
            for p in planner.values()):
        return flat
    root: dict[Any, Any] = {}
    for fqn, value in flat.items():
        path = planner.get(fqn, (fqn,))
        node = root
        for key in path[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                return flat  # a value and a mapping under one name: keep the names flat
            node = child
        if path[-1] in node:
            return flat
        node[path[-1]] = value
    return _lists(root)


def _lists(node: Any) -> Any:
    """Mappings keyed 0..n-1 by ints (a list flattened by DCP, e.g. ``param_groups``) become lists again."""
    if not isinstance(node, dict):
        return node
    items = {k: _lists(v) for k, v in node.items()}
    if items and all(type(k) is int for k in items) and sorted(items) == list(range(len(items))):
        return [items[i] for i in range(len(items))]
    return items
