"""safetensors I/O for ``formats.py``: reading single and sharded checkpoints, writing them atomically.

A sharded checkpoint is Hugging Face's layout: ``model-00001-of-0000N.safetensors`` ... and a
``model.safetensors.index.json`` whose ``weight_map`` names each tensor's shard. Every failure
of the safetensors library becomes a ``CheckpointError`` that names the file.
"""

from __future__ import annotations

import contextlib
import json
import re
import struct
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import _TYPES as SAFETENSORS_DTYPES  # the dtypes the format has a name for
from safetensors.torch import save_file

from recipec._atomic import atomic_path
from recipec._files import check_regular, read_regular
from recipec.errors import CheckpointError

INDEX_SUFFIX = ".safetensors.index.json"
MAX_INDEX_BYTES = 64 << 20  # an index maps names to shard files: a few MB for the largest models


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


def sharded_layout(index: Path) -> tuple[dict[Path, list[str]], dict[str, str]]:
    """Check a sharded checkpoint's index against its shards' headers; return shard -> names, metadata."""
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
        with safetensors_reader(shard) as reader:
            present = set(reader.keys())
            metadata.update(reader.metadata() or {})
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


def check_shard_size(shard_size: int | None) -> int:
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size <= 0:
        raise CheckpointError(f"shard_size: must be a positive number of bytes, got {shard_size!r}")
    return shard_size


def dedupe(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Store each tensor once: identical views become aliases (dropped name -> kept name).

    The first name in state-dict order is kept: it is the module that owns the parameter
    (an embedding before the head tied to it), which is what other loaders look for.
    """
    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    owners: dict[tuple[Any, ...], str] = {}
    for name, tensor in tensors.items():
        if tensor.numel():
            view = (tensor.device, _storage(tensor), tensor.data_ptr(), tensor.dtype, tensor.shape, tensor.stride())
            if view in owners:
                aliases[name] = owners[view]
                continue
            owners[view] = name
        stored[name] = tensor
    # Different views of one storage (slices of one buffer) cannot be aliases: copy them apart.
    sharing = Counter((t.device, _storage(t)) for t in stored.values() if t.numel())
    return {
        name: t.clone(memory_format=torch.contiguous_format)
        if t.numel() and sharing[(t.device, _storage(t))] > 1
        else t.contiguous()
        for name, t in stored.items()
    }, aliases


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


@dataclass(frozen=True)
class LateValue:
    """A metadata value computed while the tensor data is written (the source's SHA-256 in ``convert``).

    The header goes first with ``placeholder`` in its place and is written again once the data is
    in: ``resolve()`` must return a string whose JSON is exactly as long (a hex digest for a hex
    digest), so the data offsets stay where they are.
    """

    placeholder: str
    resolve: Callable[[], str]


Metadata = Mapping[str, "str | LateValue"]
_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
# The order safetensors (0.8) writes dtypes in (its Rust enum, descending), then names: the same bytes as save_file.
_ORDER = {name: rank for rank, name in enumerate((
    "U64", "I64", "F64", "C64", "F32", "U32", "I32", "BF16", "F16", "U16", "I16",
    "F8_E5M2FNUZ", "F8_E4M3FNUZ", "F8_E4M3", "F8_E5M2", "I8", "U8", "BOOL"))}
_WRITE_BUFFER = 1 << 20  # small tensors are gathered into 1 MiB writes; big ones go to the kernel as they are
_MAX_HEADER = 100_000_000  # what safetensors readers accept


def resolve_metadata(metadata: Metadata) -> dict[str, str]:
    """``metadata`` with every :class:`LateValue` computed (blocks until it is known)."""
    return {k: v.resolve() if isinstance(v, LateValue) else v for k, v in metadata.items()}


def _write_safetensors(tensors: dict[str, torch.Tensor], file: Path, metadata: Metadata) -> None:
    """Write ``tensors`` (contiguous, no shared storage) to ``file``, streaming each tensor's bytes.

    The bytes are those safetensors' own ``save_file`` (0.8) writes, but for the order of the
    metadata entries; the header is built here so that the data goes straight from each tensor's
    memory (a memory-mapped source's pages included) to the file, one tensor at a time, in large
    writes: no copy of the checkpoint is held, whatever its size.
    """
    if sys.byteorder != "little" or any(_NAMES.get(t.dtype) not in _ORDER for t in tensors.values()):
        _save_file(tensors, file, resolve_metadata(metadata))  # safetensors byte-swaps; leave that to it
        return
    try:
        _stream(tensors, file, metadata)
    except (OSError, CheckpointError, AssertionError):
        raise  # a full disk, a permission (atomic_path names the user's path); an internal invariant
    except Exception as exc:  # a tensor whose bytes cannot be read (sparse, meta, ...)
        raise CheckpointError(f"{file}: cannot write safetensors ({_short(exc)})") from exc


def _stream(tensors: dict[str, torch.Tensor], file: Path, metadata: Metadata) -> None:
    # The layout safetensors itself writes: by dtype, wider ones first (each tensor stays aligned), then by name.
    order = sorted(tensors, key=lambda name: (_ORDER[_NAMES[tensors[name].dtype]], name))
    entries: dict[str, Any] = {}
    offset = 0
    for name in order:
        tensor = tensors[name]
        size = tensor.numel() * tensor.element_size()
        entries[name] = {"dtype": _NAMES[tensor.dtype], "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    header = _header(entries, {k: v.placeholder if isinstance(v, LateValue) else v for k, v in metadata.items()}, file)
    with open(file, "wb", buffering=_WRITE_BUFFER) as f:
        f.write(header)
        for name in order:
            tensor = tensors[name]
            if tensor.numel():
                f.write(_bytes_of(tensor))
        if any(isinstance(v, LateValue) for v in metadata.values()):
            final = _header(entries, resolve_metadata(metadata), file)
            if len(final) != len(header):  # an internal invariant: the data would be misplaced
                raise AssertionError(f"{file}: a late metadata value changed the header's length")
            f.seek(0)
            f.write(final)


def _header(entries: dict[str, Any], metadata: dict[str, str], file: Path) -> bytes:
    body = {"__metadata__": metadata, **entries} if metadata else entries
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # pad with spaces so the data starts 8-byte aligned, as safetensors does
    if len(text) > _MAX_HEADER:
        raise CheckpointError(f"{file}: the safetensors header would be {len(text):,} bytes, more than readers accept "
                              f"({_MAX_HEADER:,}); shorten the tensor names or metadata, or shard the checkpoint")
    return struct.pack("<Q", len(text)) + text


def _bytes_of(tensor: torch.Tensor) -> Any:
    """The tensor's bytes as a buffer, without a copy for a contiguous CPU tensor (the numpy view of its memory)."""
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()  # one tensor at a time: memory stays bounded by the largest
    # resolve_conj/neg: a lazily conjugated complex view has other bytes than it shows (no-ops otherwise)
    return tensor.detach().resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8).numpy()


def _save_file(tensors: dict[str, torch.Tensor], file: Path, metadata: dict[str, str]) -> None:
    try:
        save_file(tensors, str(file), metadata=metadata)
    except OSError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{file}: cannot write safetensors ({_short(exc)})") from exc


def _stem(target: Path) -> str:
    name = target.name
    return name[: -len(INDEX_SUFFIX)] if name.endswith(INDEX_SUFFIX) else name[: -len(".safetensors")]


def save_single(stored: dict[str, torch.Tensor], target: Path, meta: Metadata) -> list[Path]:
    with atomic_path(target) as tmp:
        _write_safetensors(stored, tmp, {**meta, "format": "pt"})
    _remove_stale_shards(target.parent, _stem(target), keep=set())
    return [target]


def save_sharded(stored: dict[str, torch.Tensor], target: Path, meta: Metadata, shard_size: int) -> list[Path]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    filled = 0
    for name, tensor in stored.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and filled + nbytes > shard_size:
            shards.append({})
            filled = 0
        shards[-1][name] = tensor
        filled += nbytes
    # shards go beside the path given, as readers look for them (a symlinked index, as in the Hugging Face cache)
    stem, directory = _stem(target), target.parent
    if len(shards) == 1:
        return save_single(stored, directory / f"{stem}.safetensors", meta)
    names = [f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    index_path = directory / f"{stem}{INDEX_SUFFIX}"
    total_size = sum(t.numel() * t.element_size() for t in stored.values())
    weight_map = {key: names[i] for i, shard in enumerate(shards) for key in shard}
    # Contexts exit last-in first-out: every shard is in place before the index that names them.
    with contextlib.ExitStack() as stack:
        index_tmp = stack.enter_context(atomic_path(index_path))
        for name, shard in zip(names, shards):
            _write_safetensors(shard, stack.enter_context(atomic_path(directory / name)), {**meta, "format": "pt"})
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
