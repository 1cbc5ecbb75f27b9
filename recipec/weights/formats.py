"""Read and write checkpoints: torch (zip and legacy pickle) and safetensors (single and sharded).

Reading is always safe: torch files go through ``torch.load(weights_only=True)`` (see
``_pickle.py``), safetensors never execute anything (see ``_safetensors.py``). Writing is always atomic: a reader sees
the old files or the new ones, never a partial file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, cast

import torch

from recipec import _json as clean_json
from recipec._atomic import atomic_path
from recipec._files import check_regular, open_regular, require_path
from recipec.errors import CheckpointError
from recipec.weights._pickle import TORCH_METADATA_KEY, find_state_dict, load_torch, plain_metadata
from recipec.weights._safetensors import (
    SAFETENSORS_DTYPES,
    INDEX_SUFFIX,
    LateValue,
    check_shard_size,
    dedupe,
    safetensors_reader,
    save_sharded,
    save_single,
    sharded_layout,
    resolve_metadata,
)

__all__ = ["Checkpoint", "LateValue", "detect_format", "load", "load_state_dict", "read_metadata", "save", "sha256"]

PathType = str | PathLike[str]
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_MAX_HEADER = 100_000_000  # safetensors refuses headers above 100 MB


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        state_dict: name -> tensor (torch zip files are memory-mapped unless ``mmap=False``).
        format: ``"torch"`` (zip), ``"torch-legacy"``, ``"safetensors"`` or ``"safetensors-sharded"``.
        key: where the state dict was found (``"state_dict_ema"``, ``"model"``, a dotted key...),
            ``""`` for a raw mapping and for safetensors.
        metadata: safetensors ``__metadata__`` (str -> str), or a torch file's top-level plain
            data beside the state dict (epoch, config, ...).
        files: the files read, index and shards included.
    """

    state_dict: dict[str, torch.Tensor]
    format: str
    key: str
    metadata: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def detect_format(path: PathType) -> str:
    """Say which format a checkpoint file (or a directory holding one) is in, from its bytes.

    Returns:
        ``"torch"``, ``"torch-legacy"``, ``"safetensors"`` or ``"safetensors-sharded"``.

    Raises:
        CheckpointError: missing, empty, or not a checkpoint at all.
    """
    return sniff_format(resolve_file(path))


def load(
    path: PathType,
    *,
    state_dict_key: str = "auto",
    allow_globals: Sequence[str] = (),
    mmap: bool = True,
    check: bool = True,
) -> Checkpoint:
    """Load a checkpoint safely and find its state dict.

    Args:
        path: a ``.pt/.pth/.bin/.ckpt`` file, a ``.safetensors`` file, a sharded
            ``*.safetensors.index.json``, or a directory holding exactly one of those.
        state_dict_key: ``"auto"`` tries ``state_dict_ema``, ``model_ema``, ``model_state_dict``,
            ``state_dict``, ``model``, then the top-level mapping; a dotted key (``"ema.model"``)
            names it; ``""`` means the top-level mapping. Torch files only.
        allow_globals: ``"module.Name"`` pickle globals you trust this file to contain.
        mmap: memory-map torch zip files (legacy files cannot be).
        check: refuse tensors no model can take as they are: meta tensors (no data) and
            sparse ones. ``inspect`` passes False to describe them instead.

    Returns:
        The state dict with its format, key, metadata and files. Tensors that a safetensors
        file stored once for several names (``save_model`` aliases) come back under every name.

    Raises:
        UnsafeCheckpointError: a torch file needs a global that is not allowed.
        CheckpointError: missing, corrupt, truncated, no state dict found, or (``check``) a meta
            or sparse tensor.

    Example:
        >>> ckpt = load("runs/flowers/checkpoints/last.pt")
        >>> ckpt.key, len(ckpt.state_dict)
        ('state_dict', 122)
    """
    file = resolve_file(path)
    fmt = sniff_format(file)
    if fmt in ("safetensors", "safetensors-sharded"):
        if state_dict_key not in ("auto", ""):
            raise CheckpointError(
                f"{file}: state_dict_key {state_dict_key!r} does not apply: safetensors hold one flat "
                "state dict; use 'auto' and select keys with source.rename/include"
            )
        if fmt == "safetensors":
            files = [file]
            with safetensors_reader(file) as reader:
                metadata = dict(reader.metadata() or {})
                state_dict = {name: reader.get_tensor(name) for name in reader.keys()}  # noqa: SIM118 - safe_open is not iterable
        else:
            shards, metadata = sharded_layout(file)
            files = [file, *shards]
            state_dict = {}
            for shard, names in shards.items():
                with safetensors_reader(shard) as reader:
                    state_dict.update((name, reader.get_tensor(name)) for name in names)
        for alias, kept in metadata.items():
            if alias not in state_dict and kept in state_dict:
                state_dict[alias] = state_dict[kept]
        return Checkpoint(state_dict, fmt, "", metadata, files)
    obj, is_zip = load_torch(file, allow_globals=allow_globals, mmap=mmap)
    state_dict, key = find_state_dict(obj, state_dict_key, file)
    if check:
        _check_loaded(state_dict, file)
    return Checkpoint(state_dict, "torch" if is_zip else "torch-legacy", key, plain_metadata(obj, key, file), [file])


def _check_loaded(state_dict: Mapping[str, torch.Tensor], file: Path) -> None:
    """Tensors a model cannot take as they are; safetensors cannot hold any of these."""
    problems = []
    for key, value in state_dict.items():
        if value.is_meta:
            problems.append(f"{file}: tensor {key!r} is on the meta device: it has a shape but no data (saved from a "
                            "model built on the meta device); load real weights into the model before saving it")
        elif value.layout != torch.strided:
            problems.append(f"{file}: tensor {key!r} is a {str(value.layout).removeprefix('torch.')} tensor; recipec "
                            "reads dense tensors only: save it with `.to_dense()`")
    if problems:
        raise CheckpointError(problems)


def load_state_dict(path: PathType, **kwargs: Any) -> dict[str, torch.Tensor]:
    """``load(path, **kwargs).state_dict``."""
    return load(path, **kwargs).state_dict


def read_metadata(path: PathType) -> dict[str, str]:
    """A checkpoint's metadata without reading its tensors.

    For safetensors this is the header's ``__metadata__`` (for a sharded checkpoint: the shards'
    headers, then the index's ``metadata`` over them, without ``total_size``). A torch file has
    no header, so it is loaded (memory-mapped) and its plain metadata JSON-encoded to strings.
    """
    file = resolve_file(path)
    fmt = sniff_format(file)
    if fmt == "safetensors":
        with safetensors_reader(file) as reader:
            return dict(reader.metadata() or {})
    if fmt == "safetensors-sharded":
        return sharded_layout(file)[1]
    return {k: v if isinstance(v, str) else clean_json.dumps(v, default=str) for k, v in load(file).metadata.items()}


def sha256(path: PathType, *, stop: threading.Event | None = None) -> str:
    """Hex SHA-256 of a checkpoint file, read in chunks.

    For a sharded checkpoint this hashes the index file alone (it names every shard); a
    directory hashes the checkpoint file found in it. ``stop``, once set, ends the reading
    early (a hash computed in a thread that is no longer wanted): the result is then ``""``.
    """
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(1 << 20))
    with open_regular(resolve_file(path), what="checkpoint") as f:
        with contextlib.suppress(AttributeError, OSError):  # a hint only: read ahead of us
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while n := cast(io.BufferedIOBase, f).readinto(buffer):  # hashlib and reads release the GIL
            if stop is not None and stop.is_set():
                return ""
            digest.update(buffer[:n])
    return digest.hexdigest()


def save(
    state_dict: Mapping[str, torch.Tensor],
    path: PathType,
    *,
    metadata: Mapping[str, str] | None = None,
    shard_size: int | None = None,
    late: Mapping[str, LateValue] | None = None,
) -> list[Path]:
    """Write a state dict atomically, in the format the suffix names.

    ``.safetensors``: tensors sharing memory are stored once, the other names recorded as
    ``metadata[dropped] = kept`` (as ``safetensors.torch.save_model`` does; ``load`` restores
    them); ``"format": "pt"`` is always set. With ``shard_size`` (bytes), Hugging Face sharding:
    ``model-00001-of-0000N.safetensors`` ... plus ``model.safetensors.index.json`` (a single
    ``model.safetensors`` when everything fits in one shard); shards of this name left over
    from an earlier save are removed. Torch suffixes: ``{"state_dict": ..., "recipec_metadata":
    ...}``, readable by ``torch.load(weights_only=True)``.

    Args:
        state_dict: name -> tensor.
        path: ``.safetensors``, ``*.safetensors.index.json`` (needs ``shard_size``), or
            ``.pt/.pth/.bin/.ckpt``.
        metadata: str -> str; encode structured values with ``json.dumps``.
        shard_size: the most bytes of tensor data per shard; a bigger tensor gets a shard alone.
        late: metadata computed while the tensors are written (a hash of the source, say): a
            safetensors header is rewritten with them at the end; other formats wait for them first.

    Returns:
        The files written, index last.

    Raises:
        CheckpointError: a non-tensor value, a sparse tensor, non-str metadata, an unknown suffix.
    """
    target = Path(path)
    tensors = _check_state_dict(state_dict)
    meta = _check_metadata({**(metadata or {}), **{k: v.placeholder for k, v in (late or {}).items()}}, tensors)
    if target.name.endswith((".safetensors", INDEX_SUFFIX)):
        _check_safetensors_dtypes(tensors, target)
        stored, aliases = dedupe(tensors)
        # Tensor data streams from each tensor's memory into the file (see _safetensors._write_safetensors).
        header: dict[str, str | LateValue] = {**meta, **(late or {}), **aliases}
        if shard_size is None and target.name.endswith(".safetensors"):
            return save_single(stored, target, header)
        return save_sharded(stored, target, header, check_shard_size(shard_size))
    if shard_size is not None:
        raise CheckpointError(f"{target}: shard_size needs a .safetensors path")
    if target.suffix not in TORCH_SUFFIXES:
        raise CheckpointError(
            f"{target}: unknown checkpoint suffix {target.suffix!r}; use .safetensors or one of {', '.join(TORCH_SUFFIXES)}"
        )
    meta = resolve_metadata({**meta, **(late or {})})
    with atomic_path(target) as tmp:
        torch.save({"state_dict": tensors, TORCH_METADATA_KEY: meta}, tmp)
    return [target]


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
        f"{file}: directory holds no checkpoint (*{INDEX_SUFFIX}, *.safetensors, or {'/'.join(TORCH_SUFFIXES)})"
    )


def sniff_format(file: Path) -> str:
    if file.name.endswith(".json"):
        return "safetensors-sharded"
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


def _check_state_dict(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    problems = []
    for key, value in state_dict.items():
        if not isinstance(key, str):
            problems.append(f"state dict key {key!r}: must be a str")
        elif not isinstance(value, torch.Tensor):
            problems.append(f"state dict entry {key!r}: expected a tensor, got {type(value).__name__}")
        elif value.is_meta:
            problems.append(f"state dict entry {key!r}: a meta tensor has no data; materialise it before saving")
        elif value.layout != torch.strided:
            problems.append(f"state dict entry {key!r}: a {value.layout} tensor; make it dense with `.to_dense()`")
    if problems:
        raise CheckpointError(problems)
    return {key: value.detach() for key, value in state_dict.items()}


def _check_safetensors_dtypes(tensors: Mapping[str, torch.Tensor], target: Path) -> None:
    known = set(SAFETENSORS_DTYPES.values())  # the dtypes the format has a name for
    problems = [f"{target}: tensor {key!r} is {str(t.dtype).removeprefix('torch.')}, which safetensors cannot store "
                f"(it has complex64 but no complex128 or complex32); cast it (e.g. to complex64) or write a torch file "
                f"({', '.join(TORCH_SUFFIXES)})" for key, t in tensors.items() if t.dtype not in known]
    if problems:
        raise CheckpointError(problems)


def _check_metadata(metadata: Mapping[str, Any] | None, tensors: Mapping[str, Any]) -> dict[str, str]:
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
