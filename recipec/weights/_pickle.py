"""Reading torch (pickle) checkpoints safely (the state dict in them: ``_state.py``).

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
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import torch

from recipec._files import check_regular
from recipec.errors import CheckpointError, Problem, UnsafeCheckpointError

__all__ = ["PlainNamespace", "load_torch"]

_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_NO_PUSH_OPS = {"FRAME", "PROTO", "MARK", "POP", "POP_MARK", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"}


class PlainNamespace(dict):  # type: ignore[type-arg]
    """What an ``argparse.Namespace`` in a checkpoint becomes: its attributes as a plain dict.

    timm's CheckpointSaver stores the training command line as ``args``. The weights-only
    unpickler builds this class wherever the pickle names ``argparse.Namespace``: the object is
    created empty and its attributes are set as dict entries (pickle's BUILD), so no code of the
    file runs and the value reads as plain metadata.
    """

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"argparse.Namespace with a {type(state).__name__} state, not its attributes")
        self.update(state)


_NAMESPACE = "argparse.Namespace"


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
        if name == _NAMESPACE:  # read as plain data (see PlainNamespace)
            resolved.append((PlainNamespace, _NAMESPACE))
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


def load_torch(path: Path, *, allow_globals: Sequence[str] = (), mmap: bool = True,
               namespaces: bool = False) -> tuple[Any, bool]:
    """Unpickle a torch checkpoint with ``weights_only=True``; return (object, is_zip).

    With ``namespaces``, an ``argparse.Namespace`` (timm's ``args``) is read as a
    :class:`PlainNamespace` (a dict of its attributes) instead of being refused.

    Raises:
        UnsafeCheckpointError: the pickle needs a global that is neither allowed by torch nor
            named in ``allow_globals``; nothing in it was executed.
        CheckpointError: anything else that stops the file from loading (truncated, corrupt,
            TorchScript, not a pickle).
    """
    trusted = resolve_globals(allow_globals)
    if namespaces:
        trusted.append((PlainNamespace, _NAMESPACE))
    check_regular(path, what="checkpoint")  # a FIFO or /dev/zero must not hang or fill memory
    is_zip = zipfile.is_zipfile(path)
    if not is_zip and _starts_with(path, b"PK\x03\x04"):
        raise CheckpointError(f"{path}: truncated or corrupt torch zip file (no zip central directory)")
    with torch.serialization.safe_globals(trusted), warnings.catch_warnings():
        # torch's advice for files it is about to refuse would only confuse our own message; its note that
        # it validates a sparse tensor precedes recipec's refusal of that tensor (formats.load: dense only).
        warnings.filterwarnings("ignore", message=r".*(pickle protocol|TorchScript archive|Validating sparse tensor)",
                                category=UserWarning)
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip), is_zip
        except pickle.UnpicklingError as exc:
            message = _ANSI.sub("", str(exc))
            unsafe = _unsafe_globals(path, is_zip, message)
            if unsafe:
                listed = ", ".join(unsafe)
                error = UnsafeCheckpointError(
                    f"{path}: refused to unpickle {listed}: not tensors or plain data, and unpickling "
                    f"could run code; nothing in the file was executed. If you trust this file, add "
                    f"{unsafe!r} to source.allow_globals"
                )
                error.refused = unsafe  # the command line words the fix as --allow-global flags
                raise error from exc
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
