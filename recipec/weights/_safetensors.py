"""safetensors I/O for ``formats.py``: reading single and sharded checkpoints, writing them atomically.

A sharded checkpoint is Hugging Face's layout: ``model-00001-of-0000N.safetensors`` ... and a
``model.safetensors.index.json`` whose ``weight_map`` names each tensor's shard. Every failure
of the safetensors library becomes a ``CheckpointError`` that names the file.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from recipec._atomic import atomic_path
from recipec._files import check_regular, read_regular
from recipec.errors import CheckpointError

INDEX_SUFFIX = ".safetensors.index.json"
MAX_INDEX_BYTES = 64 << 20  # an index maps names to shard files: a few MB for the largest models


@contextlib.contextmanager
def _safetensors_reader(file: Path) -> Iterator[Any]:
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


def _sharded_layout(index: Path) -> tuple[dict[Path, list[str]], dict[str, str]]:
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
        with _safetensors_reader(shard) as reader:
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


def _check_shard_size(shard_size: int | None) -> int:
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size <= 0:
        raise CheckpointError(f"shard_size: must be a positive number of bytes, got {shard_size!r}")
    return shard_size


def _dedupe(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
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


def _write_safetensors(tensors: dict[str, torch.Tensor], file: Path, metadata: dict[str, str]) -> None:
    try:
        save_file(tensors, str(file), metadata=metadata)
    except OSError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{file}: cannot write safetensors ({_short(exc)})") from exc


def _stem(target: Path) -> str:
    name = target.name
    return name[: -len(INDEX_SUFFIX)] if name.endswith(INDEX_SUFFIX) else name[: -len(".safetensors")]


def _save_single(stored: dict[str, torch.Tensor], target: Path, meta: dict[str, str]) -> list[Path]:
    with atomic_path(target) as tmp:
        _write_safetensors(stored, tmp, {**meta, "format": "pt"})
    _remove_stale_shards(target.parent, _stem(target), keep=set())
    return [target]


def _save_sharded(stored: dict[str, torch.Tensor], target: Path, meta: dict[str, str], shard_size: int) -> list[Path]:
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
        return _save_single(stored, directory / f"{stem}.safetensors", meta)
    names = [f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    index_path = directory / f"{stem}{INDEX_SUFFIX}"
    index = {
        "metadata": {**meta, "total_size": sum(t.numel() * t.element_size() for t in stored.values())},
        "weight_map": {key: names[i] for i, shard in enumerate(shards) for key in shard},
    }
    # Contexts exit last-in first-out: every shard is in place before the index that names them.
    with contextlib.ExitStack() as stack:
        index_tmp = stack.enter_context(atomic_path(index_path))
        for name, shard in zip(names, shards):
            _write_safetensors(shard, stack.enter_context(atomic_path(directory / name)), {**meta, "format": "pt"})
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
