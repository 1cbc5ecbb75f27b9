"""The safetensors format for ``formats.py`` and ``raw.py``, without torch: headers read and checked,
files written atomically from payloads, single and sharded.

A payload is one tensor as the writer needs it: its dtype's name, its shape and where its bytes
come from: a function giving a buffer (a torch tensor's memory) or a range of another file (a
tensor of a checkpoint being converted, copied by the kernel). A sharded checkpoint is Hugging
Face's layout: ``model-00001-of-0000N.safetensors`` ... and a ``model.safetensors.index.json``
whose ``weight_map`` names each tensor's shard. Every failure of the safetensors library becomes a
``CheckpointError`` that names the file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from safetensors import safe_open

from recipec._atomic import atomic_path
from recipec._files import check_regular, read_regular
from recipec.errors import CheckpointError

INDEX_SUFFIX = ".safetensors.index.json"
MAX_INDEX_BYTES = 64 << 20  # an index maps names to shard files: a few MB for the largest models
# The order safetensors (0.8) writes dtypes in (its Rust enum, descending), then names: the same bytes as save_file.
_ORDER = {name: rank for rank, name in enumerate((
    "U64", "I64", "F64", "C64", "F32", "U32", "I32", "BF16", "F16", "U16", "I16",
    "F8_E5M2FNUZ", "F8_E4M3FNUZ", "F8_E4M3", "F8_E5M2", "I8", "U8", "BOOL"))}
ITEM_SIZES = {"U64": 8, "I64": 8, "F64": 8, "C64": 8, "F32": 4, "U32": 4, "I32": 4, "BF16": 2, "F16": 2, "U16": 2,
              "I16": 2, "F8_E5M2FNUZ": 1, "F8_E4M3FNUZ": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}
_WRITE_BUFFER = 1 << 20  # small tensors are gathered into 1 MiB writes; big ones go to the kernel as they are
_MAX_HEADER = 100_000_000  # what safetensors readers accept
_COPY_CHUNK = 1 << 30
# copy_file_range cannot serve this pair of files (another file system, an old kernel): copy through a buffer
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.ETXTBSY, errno.EBADF}


@contextlib.contextmanager
def safetensors_reader(file: Path) -> Iterator[Any]:
    """``safe_open`` whose failures, while opening or reading, become CheckpointErrors."""
    try:
        with safe_open(str(file), framework="pt", device="cpu") as reader:
            yield reader
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{file}: not a valid safetensors file, truncated or corrupt ({_short(exc)})") from exc


def _short(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


def _names_and_metadata(shard: Path) -> tuple[list[str], dict[str, str]]:
    with safetensors_reader(shard) as reader:
        return list(reader.keys()), dict(reader.metadata() or {})


def sharded_layout(index: Path, *, read: Callable[[Path], tuple[list[str], dict[str, str]]] = _names_and_metadata,
                   ) -> tuple[dict[Path, list[str]], dict[str, str]]:
    """Check a sharded checkpoint's index against its shards' headers; return shard -> names, metadata.

    ``read`` gives a shard's tensor names and metadata (default: safetensors' own reader).
    """
    raw = read_regular(index, what="sharded index", max_bytes=MAX_INDEX_BYTES)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: [[[...]]] thousands deep
        raise CheckpointError(f"{index}: not a readable JSON index ({_short(exc)})") from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    index_meta = data.get("metadata") or {} if isinstance(data, dict) else {}
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(
            f"{index}: JSON, but not a safetensors index: needs a 'weight_map' object of tensor name -> shard file"
        )
    if not isinstance(index_meta, dict):
        raise CheckpointError(f"{index}: 'metadata' must be an object, got {type(index_meta).__name__}")
    shards: dict[Path, list[str]] = {}
    for name, shard in weight_map.items():
        if Path(shard).name != shard:
            raise CheckpointError(f"{index}: shard {shard!r} of {name!r} must be a file beside the index")
        shards.setdefault(index.parent / shard, []).append(name)
    missing = [
        f"{index}: shard {s.name!r} does not exist (it holds {n[0]!r}...)" for s, n in shards.items() if not s.exists()
    ]
    if missing:
        raise CheckpointError(missing)
    for shard in shards:  # a FIFO or a link to /dev/zero must not hang or fill memory
        check_regular(shard, what="checkpoint shard")
    problems: list[str] = []
    metadata: dict[str, str] = {}
    for shard, names in shards.items():
        keys, shard_meta = read(shard)
        present = set(keys)
        metadata.update(shard_meta)
        if absent := [n for n in names if n not in present]:
            problems.append(f"{shard}: lacks tensors the index maps to it: {_preview(absent)}")
        if extra := sorted(present.difference(names)):
            problems.append(f"{shard}: holds tensors the index does not map to it: {_preview(extra)}")
    if problems:
        raise CheckpointError(problems)
    # total_size describes this layout, not the model: carried on, it would go stale.
    metadata.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in index_meta.items() if k != "total_size"})
    return shards, metadata


def _preview(names: Sequence[str], limit: int = 10) -> str:
    more = f" ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(repr(n) for n in names[:limit]) + more


@dataclass(frozen=True)
class Entry:
    """One tensor of a safetensors header: where its bytes lie in the file (``start`` counts from byte 0)."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    nbytes: int


def read_header(file: Path) -> tuple[dict[str, Entry], dict[str, str]]:
    """A safetensors file's tensors and metadata from its header, checked as safetensors checks it.

    The data must be the tensors' bytes, one after the other in the order of their offsets, no gap,
    no overlap, to the end of the file; a dtype this writer does not know is refused too.

    Raises:
        CheckpointError: not a safetensors file, or one safetensors itself would refuse.
    """
    with open(file, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{file}: too short for a safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > _MAX_HEADER or 8 + length > size:
            raise CheckpointError(f"{file}: the safetensors header length {length:,} does not fit the file")
        text = f.read(length)
    try:
        body = json.loads(text.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{file}: the safetensors header is not JSON ({_short(exc)})") from exc
    if not text.startswith(b"{") or not isinstance(body, dict):
        raise CheckpointError(f"{file}: the safetensors header is not a JSON object")
    metadata = body.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{file}: the safetensors __metadata__ must map strings to strings")
    entries: dict[str, Entry] = {}
    spans: list[tuple[int, int, str]] = []
    for name, info in body.items():
        fields: dict[str, Any] = info if isinstance(info, dict) else {}
        dtype, shape, offsets = fields.get("dtype"), fields.get("shape"), fields.get("data_offsets")
        if dtype not in ITEM_SIZES or not _ints(shape) or not _ints(offsets) or len(offsets) != 2:
            raise CheckpointError(f"{file}: tensor {name!r}: not a dtype, shape and data_offsets safetensors reads")
        begin, end = offsets
        if end - begin != math.prod(shape) * ITEM_SIZES[dtype]:
            raise CheckpointError(f"{file}: tensor {name!r}: {end - begin} bytes for shape {shape} of {dtype}")
        spans.append((begin, end, name))
        entries[name] = Entry(dtype, tuple(shape), 8 + length + begin, end - begin)
    at = 0
    for begin, end, name in sorted(spans):
        if begin != at:
            raise CheckpointError(f"{file}: tensor {name!r}: its data_offsets leave a gap or overlap another tensor")
        at = end
    if 8 + length + at != size:
        raise CheckpointError(f"{file}: the tensors' data ends at byte {8 + length + at:,}, the file at {size:,}")
    return entries, metadata


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("a key appears twice in one object")
    return found


def _ints(value: Any) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(type(v) is int and v >= 0 for v in value)


def check_shard_size(shard_size: int | None) -> int:
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size <= 0:
        raise CheckpointError(f"shard_size: must be a positive number of bytes, got {shard_size!r}")
    return shard_size


def check_metadata(metadata: Mapping[str, Any] | None, tensors: Mapping[str, Any]) -> dict[str, str]:
    """``metadata`` as str -> str; a value that is not a str, or a tensor's name in it, is refused."""
    problems = []
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            problems.append(
                f"metadata {key!r}: keys and values must be str, got {type(value).__name__} {value!r:.60}; "
                "encode structured values with json.dumps"
            )
        elif key in tensors or value in tensors:
            # save_model's convention: metadata[dropped] = kept; readers would take this for an alias.
            problems.append(f"metadata {key!r}: {value!r}: a tensor name here reads as a tied-weight alias")
    if problems:
        raise CheckpointError(problems)
    return dict(metadata or {})


@dataclass(frozen=True)
class LateValue:
    """A metadata value computed while the tensor data is written (the source's SHA-256 in ``convert``).

    The header goes first with ``placeholder`` in its place and is written again once the data is
    in: ``resolve()`` must return a string whose JSON is exactly as long (a hex digest for a hex
    digest), so the data offsets stay where they are.
    """

    placeholder: str
    resolve: Callable[[], str]


@dataclass(frozen=True)
class FileRange:
    """``nbytes`` of the file ``path`` from ``offset`` (the payload's ``nbytes``)."""

    path: Path
    offset: int


@dataclass(frozen=True)
class Payload:
    """One tensor for the writer: its safetensors dtype (``"F32"``...), shape, size in bytes, and its bytes:
    a range of another file, or a function returning a C-contiguous buffer (called once, when written)."""

    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    data: FileRange | Callable[[], Any]


Metadata = Mapping[str, "str | LateValue"]


def resolve_metadata(metadata: Metadata) -> dict[str, str]:
    """``metadata`` with every :class:`LateValue` computed (blocks until it is known)."""
    return {k: v.resolve() if isinstance(v, LateValue) else v for k, v in metadata.items()}


def _layout(payloads: Mapping[str, Payload]) -> dict[str, Any]:
    # The layout safetensors itself writes: by dtype, wider ones first (each tensor stays aligned), then by name.
    entries: dict[str, Any] = {}
    offset = 0
    for name in sorted(payloads, key=lambda n: (_ORDER[payloads[n].dtype], n)):
        p = payloads[name]
        entries[name] = {"dtype": p.dtype, "shape": list(p.shape), "data_offsets": [offset, offset + p.nbytes]}
        offset += p.nbytes
    return entries


def _write_data(payloads: Mapping[str, Payload], file: Path, metadata: Metadata) -> tuple[dict[str, Any], int]:
    """Write ``file``: the header (late values as placeholders), then every tensor's bytes; return the
    layout and the header's length."""
    try:
        return _stream(payloads, file, metadata)
    except (OSError, CheckpointError, AssertionError):
        raise  # a full disk, a permission (atomic_path names the user's path); an internal invariant
    except Exception as exc:  # a tensor whose bytes cannot be read (sparse, meta, ...)
        raise CheckpointError(f"{file}: cannot write safetensors ({_short(exc)})") from exc


def _stream(payloads: Mapping[str, Payload], file: Path, metadata: Metadata) -> tuple[dict[str, Any], int]:
    """:func:`_write_data`'s work.

    The bytes are those safetensors' own ``save_file`` (0.8) writes, but for the order of the
    metadata entries. Each payload goes straight to its place in the file: buffers in large writes,
    file ranges by the kernel (``copy_file_range``), each source file read front to back. No copy
    of the checkpoint is held, whatever its size.
    """
    entries = _layout(payloads)
    header = _header(entries, {k: v.placeholder if isinstance(v, LateValue) else v for k, v in metadata.items()}, file)
    copies: list[tuple[FileRange, int, int]] = []
    # No O_TRUNC: on ext4, closing a file that was truncated to zero starts writing it back (auto_da_alloc),
    # which holds close() for a moment per 100 MB; atomic_path's temporary file is new and empty anyway.
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    with os.fdopen(fd, "wb", buffering=0), contextlib.ExitStack() as sources:  # closes fd
        if os.fstat(fd).st_size:  # a file that held something: cut to the new file's length (every byte is written)
            os.ftruncate(fd, len(header) + sum(p.nbytes for p in payloads.values()))
        batch = _Batch(fd, 0)
        batch.add(header, 0)
        for name, entry in entries.items():
            p, at = payloads[name], len(header) + entry["data_offsets"][0]
            if not p.nbytes:
                continue
            if isinstance(p.data, FileRange):
                copies.append((p.data, p.nbytes, at))
            else:
                batch.add(p.data(), at)
        batch.flush()
        opened: dict[Path, int] = {}
        for source, nbytes, at in sorted(copies, key=lambda c: (str(c[0].path), c[0].offset)):
            if source.path not in opened:
                opened[source.path] = sources.enter_context(open(source.path, "rb")).fileno()
            _copy(opened[source.path], source, nbytes, fd, at)
    return entries, len(header)


def _write_late(file: Path, written: tuple[dict[str, Any], int], metadata: Metadata) -> None:
    """The header again, with the late values now known (as long as before: the data stays where it is)."""
    if not any(isinstance(v, LateValue) for v in metadata.values()):
        return
    entries, length = written
    final = _header(entries, resolve_metadata(metadata), file)
    if len(final) != length:  # an internal invariant: the data would be misplaced
        raise AssertionError(f"{file}: a late metadata value changed the header's length")
    fd = os.open(file, os.O_WRONLY)
    try:
        _pwrite(fd, final, 0)
    finally:
        os.close(fd)


def write_safetensors(payloads: Mapping[str, Payload], file: Path, metadata: Metadata) -> None:
    """Write ``payloads`` (dtypes of ``_ORDER``) to ``file`` as safetensors, late metadata values resolved at the end."""
    _write_late(file, _write_data(payloads, file, metadata), metadata)


class _Batch:
    """Buffers written at their places, neighbours gathered into writes of about 1 MiB."""

    def __init__(self, fd: int, at: int) -> None:
        self.fd, self.at, self.pending = fd, at, bytearray()

    def add(self, data: Any, at: int) -> None:
        view = memoryview(data).cast("B")
        if at != self.at + len(self.pending) or len(self.pending) + len(view) > _WRITE_BUFFER:
            self.flush()
            self.at = at
        if len(view) >= _WRITE_BUFFER:
            _pwrite(self.fd, view, at)
            self.at = at + len(view)
        else:
            self.pending += view

    def flush(self) -> None:
        if self.pending:
            _pwrite(self.fd, self.pending, self.at)
            self.at += len(self.pending)
            self.pending = bytearray()


def _pwrite(fd: int, data: Any, at: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, at)
        view, at = view[written:], at + written


def _copy(src: int, source: FileRange, nbytes: int, dst: int, at: int) -> None:
    """``nbytes`` of ``source`` to ``dst`` at ``at``: in the kernel where it can, else through a buffer."""
    offset = source.offset
    kernel = hasattr(os, "copy_file_range")
    while nbytes:
        count = min(nbytes, _COPY_CHUNK)
        copied = 0
        if kernel:
            try:
                copied = os.copy_file_range(src, dst, count, offset, at)
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_COPY:
                    raise
                kernel = False
        if not kernel:
            chunk = os.pread(src, min(count, 8 << 20), offset)
            _pwrite(dst, chunk, at)
            copied = len(chunk)
        if not copied:
            raise CheckpointError(f"{source.path}: ends before the tensor data at byte {offset:,}; the file was "
                                  "truncated while it was read")
        nbytes, offset, at = nbytes - copied, offset + copied, at + copied


def _header(entries: dict[str, Any], metadata: dict[str, str], file: Path) -> bytes:
    body = {"__metadata__": metadata, **entries} if metadata else entries
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # pad with spaces so the data starts 8-byte aligned, as safetensors does
    if len(text) > _MAX_HEADER:
        raise CheckpointError(f"{file}: the safetensors header would be {len(text):,} bytes, more than readers accept "
                              f"({_MAX_HEADER:,}); shorten the tensor names or metadata, or shard the checkpoint")
    return struct.pack("<Q", len(text)) + text


def _stem(target: Path) -> str:
    name = target.name
    return name[: -len(INDEX_SUFFIX)] if name.endswith(INDEX_SUFFIX) else name[: -len(".safetensors")]


def save_single(payloads: Mapping[str, Payload], target: Path, meta: Metadata) -> list[Path]:
    with atomic_path(target) as tmp:
        write_safetensors(payloads, tmp, {**meta, "format": "pt"})
    _remove_stale_shards(target.parent, _stem(target), keep=set())
    return [target]


def save_sharded(payloads: Mapping[str, Payload], target: Path, meta: Metadata, shard_size: int) -> list[Path]:
    shards: list[dict[str, Payload]] = [{}]
    filled = 0
    for name, payload in payloads.items():
        if shards[-1] and filled + payload.nbytes > shard_size:
            shards.append({})
            filled = 0
        shards[-1][name] = payload
        filled += payload.nbytes
    # shards go beside the path given, as readers look for them (a symlinked index, as in the Hugging Face cache)
    stem, directory = _stem(target), target.parent
    if len(shards) == 1:
        return save_single(payloads, directory / f"{stem}.safetensors", meta)
    names = [f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    index_path = directory / f"{stem}{INDEX_SUFFIX}"
    total_size = sum(p.nbytes for p in payloads.values())
    weight_map = {key: names[i] for i, shard in enumerate(shards) for key in shard}
    shard_meta = {**meta, "format": "pt"}
    # Contexts exit last-in first-out: every shard is in place before the index that names them.
    with contextlib.ExitStack() as stack:
        index_tmp = stack.enter_context(atomic_path(index_path))
        written = [(stack.enter_context(atomic_path(directory / name)), shard) for name, shard in zip(names, shards)]
        layouts = [_write_data(shard, tmp, shard_meta) for tmp, shard in written]
        for (tmp, _), layout in zip(written, layouts):  # the late values once every shard's data is in
            _write_late(tmp, layout, shard_meta)
        index = {"metadata": {**resolve_metadata(meta), "total_size": total_size}, "weight_map": weight_map}
        index_tmp.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    _remove_stale_shards(directory, stem, keep=set(names))
    return [*(directory / name for name in names), index_path]


def _remove_stale_shards(directory: Path, stem: str, keep: set[str]) -> None:
    pattern = re.compile(re.escape(stem) + r"-\d{5}-of-\d{5}\.safetensors")
    stale = [p for p in directory.iterdir() if pattern.fullmatch(p.name) and p.name not in keep]
    # A single file and an index of the same name would compete when the directory is loaded.
    stale.append(directory / (f"{stem}.safetensors" if keep else f"{stem}{INDEX_SUFFIX}"))
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
