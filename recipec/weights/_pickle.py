"""Reading torch (pickle) checkpoints safely and finding the state dict inside them.

Nothing here ever unpickles with ``weights_only=False``: tensors, plain containers and the
globals the user named in ``source.allow_globals`` are all a checkpoint may contain.
"""

from __future__ import annotations

import contextlib
import importlib
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import torch

from recipec._files import check_regular
from recipec.errors import CheckpointError, Problem, UnsafeCheckpointError

__all__ = ["STATE_DICT_KEYS", "TORCH_METADATA_KEY", "find_state_dict", "load_torch", "plain_metadata"]

# timm's order: an EMA of the weights, when present, is what people mean to fine-tune from.
STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "model_state_dict", "state_dict", "model")
# save() stores a torch file's metadata under this key; load() lifts it back to the top.
TORCH_METADATA_KEY = "recipec_metadata"

_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_NO_PUSH_OPS = {"FRAME", "PROTO", "MARK", "POP", "POP_MARK", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"}


def resolve_globals(names: Sequence[str]) -> list[Any]:
    """``["argparse.Namespace"]`` -> entries for ``torch.serialization.safe_globals``."""
    resolved: list[Any] = []
    problems: list[Problem] = []
    for index, name in enumerate(names):
        obj = _import_dotted(name)
        if obj is None:
            problems.append(
                (
                    ("source", "allow_globals", index),
                    f"cannot resolve {name!r}: expected an importable 'module.Name' (e.g. 'argparse.Namespace')",
                )
            )
            continue
        # Pickles name a class by where it was defined; an alias the user wrote (numpy.core
        # vs numpy._core) must be registered under the name the file actually uses.
        qualified = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
        resolved.append(obj if qualified == name else (obj, name))
    if problems:
        raise CheckpointError(problems)
    return resolved


def _import_dotted(name: str) -> Any | None:
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:split]))
        except Exception:
            continue
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        return obj
    return None


def load_torch(path: Path, *, allow_globals: Sequence[str] = (), mmap: bool = True) -> tuple[Any, bool]:
    """Unpickle a torch checkpoint with ``weights_only=True``; return (object, is_zip).

    Raises:
        UnsafeCheckpointError: the pickle needs a global that is neither allowed by torch nor
            named in ``allow_globals``; nothing in it was executed.
        CheckpointError: anything else that stops the file from loading (truncated, corrupt,
            TorchScript, not a pickle).
    """
    trusted = resolve_globals(allow_globals)
    check_regular(path, what="checkpoint")  # a FIFO or /dev/zero must not hang or fill memory
    is_zip = zipfile.is_zipfile(path)
    if not is_zip and _starts_with(path, b"PK\x03\x04"):
        raise CheckpointError(f"{path}: truncated or corrupt torch zip file (no zip central directory)")
    with torch.serialization.safe_globals(trusted), warnings.catch_warnings():
        # torch's advice for files it is about to refuse would only confuse our own message.
        warnings.filterwarnings("ignore", message=r".*(pickle protocol|TorchScript archive)", category=UserWarning)
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip), is_zip
        except pickle.UnpicklingError as exc:
            message = _ANSI.sub("", str(exc))
            unsafe = _unsafe_globals(path, is_zip, message)
            if unsafe:
                listed = ", ".join(unsafe)
                raise UnsafeCheckpointError(
                    f"{path}: refused to unpickle {listed}: not tensors or plain data, and unpickling "
                    f"could run code; nothing in the file was executed. If you trust this file, add "
                    f"{unsafe!r} to source.allow_globals"
                ) from exc
            reason = _reason(message)
            if "Unsupported operand" in reason:
                reason += "; torch's safe loader reads pickle protocol 2, torch.save's default: re-save without pickle_protocol"
            raise CheckpointError(f"{path}: not a checkpoint the safe loader can read ({reason})") from exc
        except Exception as exc:
            message = _ANSI.sub("", str(exc))
            if "TorchScript" in message:
                raise CheckpointError(
                    f"{path}: is a TorchScript archive, not a checkpoint; load it with torch.jit.load "
                    "and save its state_dict()"
                ) from exc
            raise CheckpointError(
                f"{path}: corrupt or truncated torch checkpoint ({type(exc).__name__}: {_reason(message)})"
            ) from exc


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def _reason(message: str) -> str:
    # torch wraps the useful part of an unpickling error in paragraphs of advice.
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", message, re.DOTALL)
    text = match.group(1) if match else message
    return " ".join(text.split())[:300] or "no detail"


def _unsafe_globals(path: Path, is_zip: bool, message: str) -> list[str]:
    """Every global the pickle names that the safe loader would refuse, found statically."""
    found: set[str] = set()
    if is_zip:
        # torch's scanner knows only pickle protocol 2; ours below reads any protocol.
        with contextlib.suppress(Exception):
            found.update(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    if not found:
        allowed = _allowed_globals()
        found = {name for name in _scan_globals(path, is_zip) if name not in allowed}
    match = _UNSUPPORTED_GLOBAL.search(message)
    if match and not found:
        found.add(match.group(1))
    return sorted(found)


def _allowed_globals() -> set[str]:
    # The same private tables get_unsafe_globals_in_checkpoint reads; torch has no public one.
    unpickler: Any = getattr(torch, "_weights_only_unpickler", None)
    allowed: set[str] = set()
    for getter in ("_get_allowed_globals", "_get_user_allowed_globals"):
        with contextlib.suppress(Exception):
            allowed.update(getattr(unpickler, getter)().keys())
    return allowed


def _scan_globals(path: Path, is_zip: bool) -> set[str]:
    found: set[str] = set()
    # Raw storage bytes follow a legacy file's pickles: the scan ends there, with what it found.
    with contextlib.suppress(Exception):
        if is_zip:
            with zipfile.ZipFile(path) as archive:
                member = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                with archive.open(member) as stream:
                    found |= _globals_in_pickle(stream)
        else:
            # A legacy file is several pickles in a row (magic, protocol, sys info, object).
            with open(path, "rb") as stream:
                for _ in range(5):
                    found |= _globals_in_pickle(stream)
    return found


def _globals_in_pickle(stream: IO[bytes]) -> set[str]:
    """Names of the globals one pickle refers to, read with pickletools (nothing executes)."""
    found: set[str] = set()
    memo: dict[Any, Any] = {}
    recent: list[Any] = [None, None]  # the last two values pushed, for STACK_GLOBAL
    for op, arg, _ in pickletools.genops(stream):
        name = op.name
        if name in ("GLOBAL", "INST"):
            found.add(_py3_name(*str(arg).split(" ", 1)))
        elif name == "STACK_GLOBAL" and all(isinstance(v, str) for v in recent):
            found.add(_py3_name(recent[0], recent[1]))
        elif name == "MEMOIZE":
            memo[len(memo)] = recent[-1]
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = recent[-1]
        elif name == "STOP":
            break
        if name in _STRING_OPS:
            recent = [recent[-1], arg]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            recent = [recent[-1], memo.get(arg)]
        elif name not in _NO_PUSH_OPS:
            recent = [recent[-1], None]
    return found


def _py3_name(module: str, name: str) -> str:
    # Protocol-2 pickles written by Python 2 era code say __builtin__; Python 3 reads builtins.
    return f"{'builtins' if module == '__builtin__' else module}.{name}"


def find_state_dict(obj: Any, key: str, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Pick the state dict out of a loaded checkpoint; return it and where it was found.

    ``key`` is ``"auto"`` (see ``STATE_DICT_KEYS``), ``""`` for the top-level mapping, or a
    dotted path (``"ema.model"``). Non-tensor entries inside the state dict are dropped.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a mapping with a state dict")
    if key != "auto":
        found = _walk(obj, key.split(".")) if key else obj
        state_dict = _tensors_of(found) if isinstance(found, Mapping) else {}
        if not state_dict:
            what = "no such key" if found is None else f"a {type(found).__name__} without tensors"
            raise CheckpointError(f"{path}: state_dict_key {key!r}: {what}; top-level keys: {_describe_keys(obj)}")
        return state_dict, key
    for candidate in STATE_DICT_KEYS:
        value = obj.get(candidate)
        if isinstance(value, Mapping):
            state_dict = _tensors_of(value)
            if state_dict:
                return state_dict, candidate
    values = [v for k, v in obj.items() if k != "_metadata"]
    if values and all(isinstance(v, torch.Tensor) for v in values):
        return _tensors_of(obj), ""
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


def _tensors_of(mapping: Mapping[Any, Any]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in mapping.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


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
