"""Read and write checkpoints: torch (zip and legacy pickle) and safetensors (single and sharded).

Reading is always safe: torch files go through ``torch.load(weights_only=True)`` (see
``_pickle.py``), safetensors never execute anything (see ``_safetensors.py``). Sharded ``.bin``
checkpoints, DCP directories and ONNX initializers are read too (``bin_index.py``, ``dcp.py``,
``onnx_source.py``), as safely. Writing is always atomic: a reader sees
the old files or the new ones, never a partial file. Finding, sniffing and hashing files, which needs
no torch, is in :mod:`recipec.weights.raw`.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import _TYPES as SAFETENSORS_DTYPES  # the dtypes the format has a name for

from recipec import _json as clean_json
from recipec._atomic import atomic_path
from recipec.errors import CheckpointError
from recipec.weights import bin_index, dcp, onnx_source
from recipec.weights._pickle import load_torch
from recipec.weights._safetensors import (
    INDEX_SUFFIX,
    LateValue,
    Payload,
    check_metadata,
    check_shard_size,
    resolve_metadata,
    safetensors_reader,
    save_sharded,
    save_single,
    sharded_layout,
)
from recipec.weights._state import TORCH_METADATA_KEY, find_state_dict, plain_metadata, tensors_beside
from recipec.weights.raw import TORCH_SUFFIXES, PathType, resolve_file, sniff_format

__all__ = ["Checkpoint", "LateValue", "load", "load_state_dict", "read_metadata", "save"]

_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
# formats that hold one flat state dict (no state_dict_key applies), as their messages say it
_FLAT = {"safetensors": "safetensors hold", "safetensors-sharded": "safetensors hold",
         "torch-sharded": "the shards of a .bin index hold", "onnx": "an ONNX graph holds"}


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        state_dict: name -> tensor (torch zip files are memory-mapped unless ``mmap=False``).
        format: ``"torch"`` (zip), ``"torch-legacy"``, ``"torch-sharded"`` (a ``.bin`` index),
            ``"safetensors"``, ``"safetensors-sharded"``, ``"dcp"`` or ``"onnx"``.
        key: where the state dict was found (``"state_dict_ema"``, ``"model"``, a dotted key...),
            ``""`` for a raw mapping and for safetensors.
        metadata: safetensors ``__metadata__`` (str -> str), or a torch file's top-level plain
            data beside the state dict (epoch, config, ...).
        files: the files read, index and shards included.
        beside: the tensors a torch or DCP file holds outside the state dict, by top-level key
            (``{"key": "optimizer", "tensors": 122, "bytes": ...}``: optimizer state, the other
            copy of EMA weights...); ``inspect`` shows them.
    """

    state_dict: dict[str, torch.Tensor]
    format: str
    key: str
    metadata: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    beside: list[dict[str, Any]] = field(default_factory=list)



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
        path: a ``.pt/.pth/.bin/.ckpt`` file (timm's ``.pth.tar`` too), a ``.safetensors`` file, a
            sharded ``*.safetensors.index.json`` or ``*.bin.index.json``, a DCP directory (or its
            ``.metadata``), an ``.onnx`` file (its initializers), or a directory holding exactly
            one of those.
        state_dict_key: ``"auto"`` tries ``state_dict_ema``, ``model_ema``, ``model_state_dict``,
            ``state_dict``, ``model``, then the top-level mapping; a dotted key (``"ema.model"``)
            names it; ``""`` means the top-level mapping. Torch files and DCP directories only.
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
    if fmt in _FLAT and state_dict_key not in ("auto", ""):
        raise CheckpointError(f"{file}: state_dict_key {state_dict_key!r} does not apply: {_FLAT[fmt]} one flat state "
                              "dict; use 'auto' and select keys with source.rename/include")
    if fmt in ("torch-sharded", "onnx"):
        if fmt == "onnx":
            state_dict, metadata = onnx_source.load(file)
            files = [file]
        else:
            state_dict, metadata, files = bin_index.load(file, allow_globals=allow_globals, mmap=mmap)
        if check:
            _check_loaded(state_dict, file)
        return Checkpoint(state_dict, fmt, "", metadata, files)
    if fmt in ("safetensors", "safetensors-sharded"):
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
    if fmt == "dcp":
        obj, files = dcp.load(file)
    else:
        obj, is_zip = load_torch(file, allow_globals=allow_globals, mmap=mmap, namespaces=True)
        fmt, files = "torch" if is_zip else "torch-legacy", [file]
    state_dict, key = find_state_dict(obj, state_dict_key, file, torch.Tensor)
    if check:
        _check_loaded(state_dict, file)
    return Checkpoint(state_dict, fmt, key, plain_metadata(obj, key, file), files,
                      tensors_beside(obj, state_dict, torch.Tensor, lambda t: t.numel() * t.element_size()))


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
    meta = check_metadata({**(metadata or {}), **{k: v.placeholder for k, v in (late or {}).items()}}, tensors)
    if target.name.endswith((".safetensors", INDEX_SUFFIX)):
        _check_safetensors_dtypes(tensors, target)
        stored, aliases = dedupe(tensors)
        # Tensor data streams from each tensor's memory into the file (see _safetensors._write_data).
        payloads = {name: _payload(tensor) for name, tensor in stored.items()}
        header: dict[str, str | LateValue] = {**meta, **(late or {}), **aliases}
        if shard_size is None and target.name.endswith(".safetensors"):
            return save_single(payloads, target, header)
        return save_sharded(payloads, target, header, check_shard_size(shard_size))
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


def _payload(tensor: torch.Tensor) -> Payload:
    return Payload(_NAMES[tensor.dtype], tuple(tensor.shape), tensor.numel() * tensor.element_size(),
                   lambda: _bytes_of(tensor))


def _bytes_of(tensor: torch.Tensor) -> Any:
    """The tensor's bytes, little-endian, as a buffer: no copy for a contiguous CPU tensor (the numpy view of its memory)."""
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()  # one tensor at a time: memory stays bounded by the largest
    # resolve_conj/neg: a lazily conjugated complex view has other bytes than it shows (no-ops otherwise)
    data = tensor.detach().resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8)
    if sys.byteorder == "big" and tensor.element_size() > 1:  # safetensors is little-endian: reverse each number
        width = tensor.element_size() // (2 if tensor.is_complex() else 1)
        data = data.reshape(-1, width).flip(1).reshape(-1)
    return data.numpy()
