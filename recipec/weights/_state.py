"""A loaded checkpoint's state dict and plain metadata, found in whatever its pickle held.

Torch-free: the tensors are whatever the reader made of them (``torch.Tensor`` from
``torch.load``, :class:`recipec.weights.raw.RawTensor` from the torch-free reader), named by
the ``tensor`` argument.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from recipec.errors import CheckpointError

__all__ = ["STATE_DICT_KEYS", "TORCH_METADATA_KEY", "find_state_dict", "plain_metadata", "tensors_beside"]

# timm's order: an EMA of the weights, when present, is what people mean to fine-tune from.
STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "model_state_dict", "state_dict", "model")
# save() stores a torch file's metadata under this key; load() lifts it back to the top.
TORCH_METADATA_KEY = "recipec_metadata"

T = TypeVar("T")


def find_state_dict(obj: Any, key: str, path: Path, tensor: type[T]) -> tuple[dict[str, T], str]:
    """Pick the state dict out of a loaded checkpoint; return it and where it was found.

    ``key`` is ``"auto"`` (see ``STATE_DICT_KEYS``), ``""`` for the top-level mapping, or a
    dotted path (``"ema.model"``). Entries inside the state dict that are not ``tensor`` are dropped.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a mapping with a state dict")
    if key != "auto":
        found = _walk(obj, key.split(".")) if key else obj
        state_dict = _tensors_of(found, tensor) if isinstance(found, Mapping) else {}
        if not state_dict:
            what = "no such key" if found is None else f"a {type(found).__name__} without tensors"
            raise CheckpointError(f"{path}: state_dict_key {key!r}: {what}; top-level keys: {_describe_keys(obj)}")
        return state_dict, key
    for candidate in STATE_DICT_KEYS:
        value = obj.get(candidate)
        if isinstance(value, Mapping):
            state_dict = _tensors_of(value, tensor)
            if state_dict:
                return state_dict, candidate
    values = [v for k, v in obj.items() if k != "_metadata"]
    if values and all(isinstance(v, tensor) for v in values):
        return _tensors_of(obj, tensor), ""
    raise CheckpointError(
        f"{path}: found no state dict (looked for {', '.join(STATE_DICT_KEYS)} or a mapping of tensors); "
        f"top-level keys: {_describe_keys(obj)}. Name the right one with source.state_dict_key "
        "(dotted for nested keys, e.g. 'ema.model')"
    )


def _walk(obj: Mapping[Any, Any], parts: list[str]) -> Any:
    # Keys may contain dots themselves ("model.ema"), so try the longest key first.
    for split in range(len(parts), 0, -1):
        head = ".".join(parts[:split])
        if head in obj:
            value = obj[head]
            if split == len(parts):
                return value
            if isinstance(value, Mapping):
                found = _walk(value, parts[split:])
                if found is not None:
                    return found
    return None


def _tensors_of(mapping: Mapping[Any, Any], tensor: type[T]) -> dict[str, T]:
    return {k: v for k, v in mapping.items() if isinstance(k, str) and isinstance(v, tensor)}


def _describe_keys(obj: Mapping[Any, Any], limit: int = 20) -> str:
    items = [f"{k!r} ({type(v).__name__})" for k, v in list(obj.items())[:limit]]
    more = f", ... {len(obj) - limit} more" if len(obj) > limit else ""
    return (", ".join(items) + more) or "none (empty mapping)"


def plain_metadata(obj: Any, state_dict_key: str, file: Path | None = None) -> dict[str, Any]:
    """Top-level entries of plain data (numbers, strings, lists, dicts) beside the state dict.

    Entries of anything else are left out. Plain data that contains itself, is nested deeper than
    100 levels or holds over 1,000,000 values (shared ones counted each time: a pickle can share
    a list with itself 2**100 times in a few bytes) is refused: it cannot be written as JSON,
    and walking it would exhaust the stack or the time.

    Raises:
        CheckpointError: a cyclic, too deeply nested or too large entry.
    """
    if not isinstance(obj, Mapping) or not state_dict_key:
        return {}
    top = state_dict_key.split(".")[0]
    metadata: dict[str, Any] = {}
    for key, value in obj.items():
        if key in (top, state_dict_key) or not isinstance(key, str):
            continue
        plain = _is_plain(value)
        if isinstance(plain, str):
            raise CheckpointError(f"{file or 'checkpoint'}: metadata {key!r} {plain}; a checkpoint's metadata must be "
                                  "plain data: save the file without it")
        if not plain:
            continue
        if key == TORCH_METADATA_KEY and isinstance(value, Mapping):
            metadata.update(value)
        else:
            metadata[key] = value
    return metadata


_MAX_DEPTH = 100
_MAX_VALUES = 1_000_000
_SCALARS = (bool, int, float, str)


def _is_plain(value: Any) -> bool | str:
    """True for plain data, False for anything else, or why plain data cannot be used (cyclic, too deep, too large).

    An iterative depth-first walk, so a hostile nesting cannot exhaust the stack; a list shared
    many times is walked once, its expanded size (what JSON would write) added up from memo.
    """
    if value is None or isinstance(value, _SCALARS):
        return True
    size: dict[int, int] = {}  # id -> values below it, shared ones counted each time (finished containers)
    path: set[int] = set()  # ids of the containers being walked: meeting one again is a cycle
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        item, finished = stack.pop()
        key = id(item)
        if finished:
            path.discard(key)
            size[key] = len(item) + sum(size[id(child)] for child in _containers(item))
            if size[key] > _MAX_VALUES:
                return f"holds more than {_MAX_VALUES:,} values (shared ones counted each time they appear)"
            continue
        if key in size:
            continue
        if key in path:
            return "is cyclic (a list or mapping that contains itself)"
        if not isinstance(item, (list, tuple, Mapping)):
            return False
        if isinstance(item, Mapping) and not all(isinstance(k, _SCALARS) for k in item):
            return False
        if len(path) >= _MAX_DEPTH:
            return f"is nested deeper than {_MAX_DEPTH} levels"
        path.add(key)
        stack.append((item, True))
        stack.extend((child, False) for child in _containers(item))
    return True


def _containers(item: Any) -> list[Any]:
    """The children of a list, tuple or mapping that are not scalars (containers, or anything else)."""
    children = item.values() if isinstance(item, Mapping) else item
    return [c for c in children if c is not None and not isinstance(c, _SCALARS)]


def tensors_beside(obj: Any, state_dict: Mapping[str, T], tensor: type[T], nbytes: Callable[[T], int],
                   ) -> list[dict[str, Any]]:
    """The tensors a checkpoint holds outside its state dict, by top-level key (in file order).

    Optimizer state, a second copy of the weights (``state_dict`` beside ``state_dict_ema``),
    a scaler's state: what the file's size holds beyond the weights. A tensor is counted once
    however often it is referred to; the walk stops after 1,000,000 values.

    Returns:
        ``{"key", "tensors", "bytes"}`` for every top-level key that holds such tensors.
    """
    if not isinstance(obj, Mapping):
        return []
    seen = {id(t) for t in state_dict.values()}
    beside = []
    budget = _MAX_VALUES
    for key, value in obj.items():
        count = size = 0
        stack, visited = [value], set()
        while stack and budget > 0:
            item = stack.pop()
            budget -= 1
            if isinstance(item, tensor):
                if id(item) not in seen:
                    seen.add(id(item))
                    count, size = count + 1, size + nbytes(item)
            elif isinstance(item, (Mapping, list, tuple)) and id(item) not in visited:
                visited.add(id(item))
                stack.extend(item.values() if isinstance(item, Mapping) else item)
        if count:
            beside.append({"key": str(key), "tensors": count, "bytes": size})
    return beside
