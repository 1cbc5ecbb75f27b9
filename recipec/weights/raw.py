"""Checkpoint files without torch: finding, sniffing and hashing them, and their tensors as bytes.

The fast path of ``recipec convert`` to safetensors: :func:`load` reads a safetensors file, a
sharded index or a torch zip file into :class:`RawTensor` s (a dtype, a shape and where the bytes
lie), :func:`cast` changes floating dtypes with numpy, :func:`save` writes safetensors while the
kernel copies the bytes from file to file. Without torch to import (about 1.4 s) a conversion
takes about as long as hashing its source.

:func:`load` returns None where the file needs torch: a legacy torch file, a pickle beyond what
``_torchzip.py`` reads, a tensor that is not one contiguous run of bytes, anything torch's or
safetensors' own reader would refuse or word differently; :func:`cast` returns None for a dtype
numpy lacks (float8). The caller then goes through :mod:`recipec.weights.formats`. Both routes
write the same bytes (tests compare them), but for the payload bits of NaNs, on which torch's own
casts do not agree (float32 NaN to bfloat16 gives 0xffff, float16 NaN to bfloat16 0x7fc0): here
a NaN stays a NaN of the same sign.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import mmap
import os
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from recipec._files import check_regular, open_regular, require_path
from recipec.errors import CheckpointError
from recipec.weights import _torchzip
from recipec.weights._safetensors import (
    INDEX_SUFFIX,
    ITEM_SIZES,
    FileRange,
    LateValue,
    Payload,
    check_metadata,
    check_shard_size,
    read_header,
    save_sharded,
    save_single,
    sharded_layout,
)
from recipec.weights._state import find_state_dict, plain_metadata

__all__ = ["INDEX_SUFFIX", "TORCH_SUFFIXES", "LateValue", "RawCheckpoint", "RawTensor", "cast", "detect_format", "load",
           "resolve_file", "save", "sha256", "sniff_format"]

PathType = str | PathLike[str]
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
TORCH_INDEX_SUFFIXES = tuple(suffix + ".index.json" for suffix in TORCH_SUFFIXES)  # pytorch_model.bin.index.json
DCP_METADATA = ".metadata"  # a DCP directory's pickled metadata, beside its __R_S.distcp files
_MAX_HEADER = 100_000_000  # safetensors refuses headers above 100 MB
_HASH_CHUNK = 8 << 20
_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}
_FLOATS = ("F64", "F32", "F16", "BF16")  # what numpy casts; float8 (F8_*) is floating too, for torch


@dataclass(frozen=True)
class RawTensor:
    """A tensor's bytes in a file: ``numel`` values of ``stored`` at ``offset``, written as ``dtype``
    (``stored`` unless :func:`cast` changed it). Names are safetensors' (``"F32"``, ``"BF16"``...)."""

    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]  # torch's, for tied weights: views alike in all of these are one tensor
    file: Path
    offset: int
    stored: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * ITEM_SIZES[self.dtype]


@dataclass
class RawCheckpoint:
    """What :func:`load` read: as :class:`recipec.weights.formats.Checkpoint`, with tensors as bytes."""

    state_dict: dict[str, RawTensor]
    format: str
    key: str
    metadata: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


class _NeedsTorch(Exception):
    pass


def load(path: PathType) -> RawCheckpoint | None:
    """Read a checkpoint's tensors as byte ranges of its files, or None where it needs torch (see above).

    Raises:
        CheckpointError: ``path`` is missing, empty, or not a checkpoint at all (as ``formats.load``).
    """
    file = resolve_file(path)
    fmt = sniff_format(file)
    try:
        if fmt == "torch":
            obj = _torchzip.read(file)
            if obj is None:
                return None
            found, key = find_state_dict(obj, "auto", file, _torchzip.Stored)
            state = {name: RawTensor(t.dtype, t.shape, t.stride, file, t.offset, t.dtype) for name, t in found.items()}
            return RawCheckpoint(state, fmt, key, plain_metadata(obj, key, file), [file])
        if fmt == "safetensors":
            entries, metadata = read_header(file)
            state = {name: _tensor(entries[name], file) for name in sorted(entries)}  # safe_open's order
            files = [file]
        elif fmt == "safetensors-sharded":
            shards, metadata = sharded_layout(file, read=_names_and_metadata)
            files, state = [file, *shards], {}
            for shard, names in shards.items():
                entries = read_header(shard)[0]
                state.update((name, _tensor(entries[name], shard)) for name in names)
        else:
            return None
    except (CheckpointError, _NeedsTorch):
        return None  # formats.load reads it next, and says what is wrong in its own words
    for alias, kept in metadata.items():  # save_model's aliases, as formats.load restores them
        if alias not in state and kept in state:
            state[alias] = state[kept]
    return RawCheckpoint(state, fmt, "", metadata, files)


def _tensor(entry: Any, file: Path) -> RawTensor:
    stride, step = [], 1
    for n in reversed(entry.shape):
        stride.append(step)
        step *= n
    return RawTensor(entry.dtype, entry.shape, tuple(reversed(stride)), file, entry.start, entry.dtype)


def _names_and_metadata(shard: Path) -> tuple[list[str], dict[str, str]]:
    entries, metadata = read_header(shard)
    return sorted(entries), metadata


def cast(state: Mapping[str, RawTensor], dtype: str | None) -> dict[str, RawTensor] | None:
    """Floating tensors to ``dtype`` (``"float16"``, ``"bfloat16"``, ``"float32"``), others as they are;
    None where a tensor needs torch to cast (float8). The bytes are converted when written."""
    if dtype is None:
        return dict(state)
    target = _DTYPES[dtype]
    if any(t.dtype.startswith("F8") for t in state.values()):
        return None
    return {name: dataclasses.replace(t, dtype=target) if t.dtype in _FLOATS else t for name, t in state.items()}


def save(state: Mapping[str, RawTensor], path: PathType, *, metadata: Mapping[str, str] | None = None,
         shard_size: int | None = None, late: Mapping[str, LateValue] | None = None) -> list[Path]:
    """Write ``state`` as safetensors, atomically: ``formats.save``'s layout, aliases and sharding, byte for byte.

    Args:
        state: name -> raw tensor (from :func:`load`, maybe :func:`cast`).
        path: ``.safetensors``, or ``*.safetensors.index.json`` with ``shard_size``.
        metadata: str -> str.
        shard_size: the most bytes of tensor data per shard.
        late: metadata computed while the tensors are written (the source's hash).

    Returns:
        The files written, index last.

    Raises:
        CheckpointError: non-str metadata or metadata naming a tensor; a source truncated meanwhile.
    """
    target = Path(path)
    meta = check_metadata({**(metadata or {}), **{k: v.placeholder for k, v in (late or {}).items()}}, state)
    if not target.name.endswith((".safetensors", INDEX_SUFFIX)):
        raise CheckpointError(f"{target}: raw.save writes safetensors; use formats.save for {target.suffix!r}")
    stored: dict[str, RawTensor] = {}
    aliases: dict[str, str] = {}
    owners: dict[RawTensor, str] = {}
    for name, tensor in state.items():  # tied weights stored once, under the first name (as formats.save)
        if tensor.numel:
            if tensor in owners:
                aliases[name] = owners[tensor]
                continue
            owners[tensor] = name
        stored[name] = tensor
    payloads = {name: _payload(t) for name, t in stored.items()}
    header: dict[str, str | LateValue] = {**meta, **(late or {}), **aliases}
    if shard_size is None and target.name.endswith(".safetensors"):
        return save_single(payloads, target, header)
    return save_sharded(payloads, target, header, check_shard_size(shard_size))


def _payload(tensor: RawTensor) -> Payload:
    if tensor.dtype == tensor.stored:
        return Payload(tensor.dtype, tensor.shape, tensor.nbytes, FileRange(tensor.file, tensor.offset))
    return Payload(tensor.dtype, tensor.shape, tensor.nbytes, lambda: _converted(tensor))


def _converted(tensor: RawTensor) -> Any:
    """The tensor's values cast to its dtype, bit for bit as torch casts them (NaN payloads aside).

    torch casts float64 to float16 and bfloat16 through float32 (two roundings), float32 to
    float16 and bfloat16 to the nearest, ties to even; so does this.
    """
    import numpy as np  # noqa: PLC0415 (numpy, ~0.1 s: only a --dtype cast needs it)

    size = tensor.numel * ITEM_SIZES[tensor.stored]
    with open(tensor.file, "rb") as f:
        data = os.pread(f.fileno(), size, tensor.offset) if size else b""
    if len(data) != size:
        raise CheckpointError(f"{tensor.file}: ends before the tensor data at byte {tensor.offset:,}; the file was "
                              "truncated while it was read")
    with np.errstate(all="ignore"):
        if tensor.stored == "BF16":
            wide = (np.frombuffer(data, "<u2").astype("<u4") << 16).view("<f4")
        else:
            wide = np.frombuffer(data, {"F64": "<f8", "F32": "<f4", "F16": "<f2"}[tensor.stored]).astype("<f4")
        if tensor.dtype == "F32":
            return wide
        if tensor.dtype == "F16":
            return wide.astype("<f2")
        bits = wide.view("<u4")
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        return np.where(np.isnan(wide), (bits >> 16) | 0x40, rounded).astype("<u2")


def sha256(path: PathType, *, stop: threading.Event | None = None) -> str:
    """Hex SHA-256 of a checkpoint file, hashed from its memory map (hashlib lets other threads run meanwhile).

    For a sharded checkpoint this hashes the index file alone (it names every shard); a
    directory hashes the checkpoint file found in it. ``stop``, once set, ends the reading
    early (a hash computed in a thread that is no longer wanted): the result is then ``""``.
    """
    digest = hashlib.sha256()
    with open_regular(resolve_file(path), what="checkpoint") as f:
        size = os.fstat(f.fileno()).st_size
        if not size:
            return digest.hexdigest()
        with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mapped:
            with contextlib.suppress(AttributeError, OSError):  # a hint only: read ahead of us
                mapped.madvise(mmap.MADV_SEQUENTIAL)
            view = memoryview(mapped)
            try:
                for start in range(0, size, _HASH_CHUNK):
                    if stop is not None and stop.is_set():
                        return ""
                    digest.update(view[start:start + _HASH_CHUNK])
            finally:
                view.release()
    return digest.hexdigest()


def detect_format(path: PathType) -> str:
    """Say which format a checkpoint file (or a directory holding one) is in, from its bytes.

    Returns:
        ``"torch"``, ``"torch-legacy"``, ``"torch-sharded"`` (a ``*.bin.index.json``), ``"safetensors"``,
        ``"safetensors-sharded"``, ``"dcp"`` (a directory with ``.metadata``) or ``"onnx"`` (by suffix).

    Raises:
        CheckpointError: missing, empty, or not a checkpoint at all.
    """
    return sniff_format(resolve_file(path))


def resolve_file(path: PathType) -> Path:
    """The checkpoint file ``path`` names (a directory: the one checkpoint in it), checked to be a regular file."""
    file = _locate(require_path(path, what="checkpoint", error=CheckpointError))
    check_regular(file, what="checkpoint")  # a FIFO or /dev/zero must not hang or fill memory
    return file


def _locate(file: Path) -> Path:
    if not file.exists():
        raise CheckpointError(f"{file}: no such file or directory")
    if not file.is_dir():
        return file
    tiers = [
        sorted(file.glob("*" + INDEX_SUFFIX)),
        sorted(file.glob("*.safetensors")),
        sorted(p for p in file.iterdir() if p.name.endswith(TORCH_INDEX_SUFFIXES)),
        [file / DCP_METADATA] if (file / DCP_METADATA).exists() else [],
        sorted(p for p in file.iterdir() if p.suffix in TORCH_SUFFIXES),
    ]
    if (file / ("model" + INDEX_SUFFIX)).is_file():
        return file / ("model" + INDEX_SUFFIX)
    for found in tiers:
        if len(found) == 1:
            return found[0]
        if found:
            names = ", ".join(p.name for p in found)
            raise CheckpointError(f"{file}: several checkpoints ({names}); name the file to use")
    raise CheckpointError(
        f"{file}: directory holds no checkpoint (*{INDEX_SUFFIX}, *.safetensors, *.bin.index.json, a DCP "
        f"{DCP_METADATA}, or {'/'.join(TORCH_SUFFIXES)})"
    )


def sniff_format(file: Path) -> str:
    """The format of a checkpoint file from its first bytes (see :func:`detect_format`)."""
    if file.name.endswith(TORCH_INDEX_SUFFIXES):
        return "torch-sharded"
    if file.name.endswith(".json"):
        return "safetensors-sharded"
    if file.name == DCP_METADATA:
        return "dcp"
    if file.suffix == ".onnx":
        return "onnx"  # protobuf has no magic bytes; read_onnx says what is wrong with it
    try:
        with open_regular(file, what="checkpoint") as f:
            head = f.read(9)
    except OSError as exc:
        raise CheckpointError(f"{file}: cannot be read ({exc.strerror})") from exc
    if not head:
        raise CheckpointError(f"{file}: empty file")
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < _MAX_HEADER:
        return "safetensors"
    if head.startswith(b"PK"):
        return "torch"
    if file.name.endswith(".safetensors"):
        return "safetensors"  # let the reader say what is wrong with it
    if head[0] == 0x80:  # pickle PROTO opcode: torch's legacy format
        return "torch-legacy"
    raise CheckpointError(
        f"{file}: not a checkpoint: neither a torch file (zip or pickle) nor safetensors (starts with {head[:8]!r})"
    )
