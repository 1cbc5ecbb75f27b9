"""Torch zip files (``torch.save``'s format) read without torch: each tensor as a dtype, a shape and
where its bytes lie in the file. For ``raw.load``, the fast path of ``recipec convert``.

The pickle is read by a restricted unpickler of our own, stricter than torch's ``weights_only``
one (``torch/_weights_only_unpickler.py``, which it follows opcode for opcode): fewer opcodes
(those ``torch.save`` writes) and thirteen globals, none of them imported or called as named:
``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` and ``_rebuild_parameter``, and
the storage types of ten dtypes. Anything else (another global or opcode, a legacy file, a
TorchScript archive, a compressed or missing record, big-endian data, a tensor that is not one
contiguous run of its storage) makes :func:`read` return None, and the caller loads the file
with torch instead, which reads it or says what is wrong with it: this path never accepts a file
torch's safe loader refuses, and never words a refusal itself.
"""

from __future__ import annotations

import math
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Stored", "read"]

_STORAGES = {"FloatStorage": "F32", "DoubleStorage": "F64", "HalfStorage": "F16", "BFloat16Storage": "BF16",
             "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
             "ByteStorage": "U8", "BoolStorage": "BOOL"}
_SIZES = {"F32": 4, "F64": 8, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_VERSIONS = range(1, 4)  # the zip format versions torch has written (3 since torch 1.6)


class _NeedsTorch(Exception):
    """Outside what this reader takes: the caller reads the file with torch."""


@dataclass(frozen=True)
class Stored:
    """A tensor found in the pickle: ``nbytes`` at ``offset`` of the file, as one contiguous run."""

    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True)
class _StorageType:
    dtype: str


@dataclass(frozen=True)
class _Storage:
    dtype: str
    offset: int   # of its record's data in the file
    nbytes: int


def read(path: Path) -> Any | None:
    """The object a torch zip file holds, its tensors as :class:`Stored`; None where torch must read it."""
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
            records = _records(archive)
            return _Unpickler(archive.read(records["data.pkl"]), _Records(path, archive, raw, records)).load()
    except Exception:  # whatever it is, torch reads the file next and reports it in its own words
        return None


def _records(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The archive's records by name below its one top folder, as torch's reader finds them."""
    infos = archive.infolist()
    prefix = infos[0].filename.split("/")[0] + "/" if infos else ""
    names = [info.filename for info in infos]
    if not prefix or len(set(names)) != len(names) or not all(n.startswith(prefix) for n in names):
        raise _NeedsTorch("not one folder of uniquely named records")
    records = {info.filename[len(prefix):]: info for info in infos}
    if "data.pkl" not in records or "constants.pkl" in records or any(n.startswith("code/") for n in records):
        raise _NeedsTorch("no data.pkl, or TorchScript")
    version = records.get(".data/version") or records.get("version")
    if version is None or int(archive.read(version).strip() or b"0") not in _VERSIONS:
        raise _NeedsTorch("a zip format version this reader does not know")
    if "byteorder" in records and archive.read(records["byteorder"]) != b"little":
        raise _NeedsTorch("big-endian data")
    return records


class _Records:
    """The storages of the archive: where each record's bytes start in the file (records are stored, not compressed)."""

    def __init__(self, path: Path, archive: zipfile.ZipFile, raw: Any, records: dict[str, zipfile.ZipInfo]) -> None:
        self.path, self.archive, self.raw, self.records = path, archive, raw, records
        self.size = path.stat().st_size
        self.loaded: dict[str, _Storage] = {}

    def storage(self, key: str, dtype: str, numel: int) -> _Storage:
        if key in self.loaded:  # torch keeps the first storage of a key, whatever a later id says
            return self.loaded[key]
        info = self.records[f"data/{key}"]
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1 or info.file_size != numel * _SIZES[dtype]:
            raise _NeedsTorch("a compressed, encrypted or mis-sized storage record")
        self.raw.seek(info.header_offset)
        local = self.raw.read(30)
        if local[:4] != b"PK\x03\x04":
            raise _NeedsTorch("no local file header")
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + name_length + extra_length
        if start + info.file_size > self.size:
            raise _NeedsTorch("a record beyond the end of the file")
        self.loaded[key] = _Storage(dtype, start, info.file_size)
        return self.loaded[key]


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any,
                       backward_hooks: Any, metadata: Any = None) -> Stored:
    if not (isinstance(storage, _Storage) and _ints(size) and _ints(stride) and len(size) == len(stride)
            and type(storage_offset) is int and storage_offset >= 0 and isinstance(requires_grad, bool)
            and type(backward_hooks) is OrderedDict and not backward_hooks and metadata is None):
        raise _NeedsTorch("a tensor this reader does not rebuild")
    numel, item = math.prod(size), _SIZES[storage.dtype]
    expected, step = [], 1
    for n in reversed(size):  # the strides of a contiguous tensor; a dimension of size 1 may have any
        expected.append(step)
        step *= n
    if numel and any(s != e and n != 1 for n, s, e in zip(size, stride, reversed(expected))):
        raise _NeedsTorch("a non-contiguous tensor")
    begin = storage_offset * item if numel else 0
    if begin + numel * item > storage.nbytes:
        raise _NeedsTorch("a tensor beyond its storage")
    return Stored(storage.dtype, tuple(size), tuple(stride), storage.offset + begin, numel * item)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> Stored:
    if not isinstance(data, Stored) or not isinstance(requires_grad, bool) or type(backward_hooks) is not OrderedDict:
        raise _NeedsTorch("a parameter this reader does not rebuild")
    return data


def _ints(value: Any) -> bool:
    return isinstance(value, tuple) and all(type(v) is int and v >= 0 for v in value)


_GLOBALS: dict[str, Any] = {
    "collections\nOrderedDict": OrderedDict,
    "torch._utils\n_rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils\n_rebuild_parameter": _rebuild_parameter,
    **{f"torch\n{name}": _StorageType(dtype) for name, dtype in _STORAGES.items()},
}
_CALLABLE = (OrderedDict, _rebuild_tensor_v2, _rebuild_parameter)


class _Unpickler:
    """torch's weights-only unpickler, restricted further (see the module's docstring)."""

    def __init__(self, data: bytes, records: _Records) -> None:
        self.data, self.at, self.records = data, 0, records
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}

    def read(self, n: int) -> bytes:
        chunk = self.data[self.at:self.at + n]
        if len(chunk) != n:
            raise _NeedsTorch("the pickle ends early")
        self.at += n
        return chunk

    def readline(self) -> str:
        end = self.data.index(b"\n", self.at)
        line, self.at = self.data[self.at:end], end + 1
        return line.decode("utf-8")

    def pop_mark(self) -> list[Any]:
        items, self.stack = self.stack, self.metastack.pop()
        return items

    def load(self) -> Any:  # one branch per opcode, as pickle's own
        read = self.read
        while True:
            op = read(1)[0]
            if op == 0x80:  # PROTO
                read(1)
            elif op == 0x2E:  # STOP
                return self.stack.pop()
            elif op == 0x63:  # GLOBAL
                name = f"{self.readline()}\n{self.readline()}"
                if name not in _GLOBALS:
                    raise _NeedsTorch(f"the global {name!r}")
                self.stack.append(_GLOBALS[name])
            elif op == 0x52:  # REDUCE
                args, func = self.stack.pop(), self.stack[-1]
                if not isinstance(args, tuple) or not any(func is f for f in _CALLABLE):
                    raise _NeedsTorch("a call of something else")
                self.stack[-1] = func(*args)
            elif op == 0x62:  # BUILD: torch sets an OrderedDict's attributes (a state dict's _metadata); unused here
                state = self.stack.pop()
                if type(self.stack[-1]) is not OrderedDict or type(state) is not dict:
                    raise _NeedsTorch("a BUILD of something else")
            elif op == 0x51:  # BINPERSID
                self.stack.append(self.persistent_load(self.stack.pop()))
            elif op == 0x28:  # MARK
                self.metastack.append(self.stack)
                self.stack = []
            elif op == 0x74:  # TUPLE
                items = self.pop_mark()  # first: it replaces self.stack
                self.stack.append(tuple(items))
            elif op in (0x85, 0x86, 0x87):  # TUPLE1, TUPLE2, TUPLE3
                n = op - 0x84
                if len(self.stack) < n:
                    raise _NeedsTorch("a tuple of missing items")
                self.stack[-n:] = [tuple(self.stack[-n:])]
            elif op in (0x61, 0x65):  # APPEND, APPENDS
                items = [self.stack.pop()] if op == 0x61 else self.pop_mark()
                if type(self.stack[-1]) is not list:
                    raise _NeedsTorch("an append to something else")
                self.stack[-1].extend(items)
            elif op in (0x73, 0x75):  # SETITEM, SETITEMS
                items = self.stack[-2:] if op == 0x73 else self.pop_mark()
                if op == 0x73:
                    del self.stack[-2:]
                if type(self.stack[-1]) not in (dict, OrderedDict) or len(items) % 2:
                    raise _NeedsTorch("a setitem on something else")
                for i in range(0, len(items), 2):
                    self.stack[-1][items[i]] = items[i + 1]
            elif op in _CONSTANTS:
                self.stack.append(_CONSTANTS[op]())
            elif op == 0x4A:  # BININT
                self.stack.append(struct.unpack("<i", read(4))[0])
            elif op == 0x4B:  # BININT1
                self.stack.append(read(1)[0])
            elif op == 0x4D:  # BININT2
                self.stack.append(struct.unpack("<H", read(2))[0])
            elif op == 0x8A:  # LONG1
                self.stack.append(int.from_bytes(read(read(1)[0]), "little", signed=True))
            elif op == 0x47:  # BINFLOAT
                self.stack.append(struct.unpack(">d", read(8))[0])
            elif op == 0x58:  # BINUNICODE
                self.stack.append(str(read(struct.unpack("<I", read(4))[0]), "utf-8", "surrogatepass"))
            elif op in (0x68, 0x6A):  # BINGET, LONG_BINGET
                self.stack.append(self.memo[read(1)[0] if op == 0x68 else struct.unpack("<I", read(4))[0]])
            elif op in (0x71, 0x72):  # BINPUT, LONG_BINPUT
                self.memo[read(1)[0] if op == 0x71 else struct.unpack("<I", read(4))[0]] = self.stack[-1]
            else:
                raise _NeedsTorch(f"the opcode {op:#x}")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)
                and isinstance(pid[2], str) and isinstance(pid[3], str) and type(pid[4]) is int and pid[4] >= 0):
            raise _NeedsTorch("a persistent id other than a typed storage")
        return self.records.storage(pid[2], pid[1].dtype, pid[4])


_CONSTANTS: dict[int, Callable[[], Any]] = {  # NONE, NEWTRUE, NEWFALSE, EMPTY_TUPLE, EMPTY_LIST, EMPTY_DICT, EMPTY_SET
    0x4E: lambda: None, 0x88: lambda: True, 0x89: lambda: False, 0x29: tuple, 0x5D: list, 0x7D: dict, 0x8F: set}
