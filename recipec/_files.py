"""Opening files the user names: inputs are regular files of bounded size, outputs are never inputs.

Every reader of a user-named file (recipes and their ``extends``, checkpoints and shards,
files hashed for ``source.sha256``, card templates) goes through :func:`open_regular` or
:func:`check_regular`: a FIFO, a device (``/dev/zero``, ``/dev/urandom``), a socket or a
directory, or a symlink to one, is refused at once instead of hanging or filling memory.
The path is ``stat``-ed before it is opened, opened with ``O_NONBLOCK`` (a FIFO swapped in
between cannot block) and ``fstat``-ed again; a size limit is checked before reading and
enforced while reading (files in ``/proc`` report size 0).

Outputs go through :func:`check_output`: never empty, never a special file, never one of
the inputs of the same command (the same file by device and inode, so through symlinks and
hard links too).

This module never imports torch (recipe loading stays torch-free).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from recipec.errors import CheckpointError, OutputError, RecipecError

__all__ = ["check_output", "check_regular", "expand_inputs", "kind_of", "open_regular", "read_regular", "require_path",
           "same_file"]

PathLike = str | os.PathLike[str]
_CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".index.json", ".onnx")
_MAX_INDEX = 64 << 20  # a sharded index names shards; 64 MiB is far beyond any real one


def kind_of(mode: int) -> str:
    """What a file of this ``st_mode`` is, for messages: ``"a FIFO (named pipe)"``, ``"a character device"``..."""
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def require_path(path: PathLike | None, *, what: str, error: type[RecipecError] = OutputError) -> Path:
    """``path`` as a Path, refusing the empty string (``Path("")`` would silently mean the working directory).

    Raises:
        error: ``path`` is empty.
    """
    text = os.fspath(path) if path is not None else ""
    if not text:
        raise error(f"{what}: the path is empty; give a file name")
    return Path(text)


def _shown(path: PathLike) -> str:
    """The user's path, and where it leads when it is a symlink."""
    text = os.fspath(path)
    if os.path.islink(text):
        return f"{text} (a link to {os.path.realpath(text)})"
    return text


def check_regular(path: PathLike, *, what: str, error: type[RecipecError] = CheckpointError,
                  max_bytes: int | None = None) -> os.stat_result:
    """Refuse anything but an existing regular file (symlinks followed), before anything opens it.

    Args:
        path: the user's path.
        what: what the file is for (``"recipe"``, ``"checkpoint"``...), for the message.
        error: the error class to raise (its exit code is the command's).
        max_bytes: the largest size accepted, if any.

    Returns:
        The file's ``stat``.

    Raises:
        error: missing, empty path, not a regular file, or larger than ``max_bytes``.
    """
    file = require_path(path, what=what, error=error)
    try:
        st = os.stat(file)
    except FileNotFoundError:
        raise error(f"{file}: no such file") from None
    except OSError as exc:
        raise error(f"{file}: cannot read this {what} ({exc.strerror or exc})") from None
    _check_stat(file, st, what=what, error=error, max_bytes=max_bytes)
    return st


def _check_stat(file: PathLike, st: os.stat_result, *, what: str, error: type[RecipecError],
                max_bytes: int | None) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{_shown(file)}: is {kind_of(st.st_mode)}, not a regular file; a {what} is read only "
                    "from a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise error(f"{file}: {st.st_size:,} bytes, more than a {what} may be ({max_bytes:,} bytes); "
                    f"is this the right file?")


@contextlib.contextmanager
def open_regular(path: PathLike, *, what: str, error: type[RecipecError] = CheckpointError,
                 max_bytes: int | None = None) -> Iterator[BinaryIO]:
    """Open a regular file for binary reading; anything else is refused before it can block.

    Raises:
        error: as :func:`check_regular`, also when the file changed kind between ``stat`` and ``open``.

    Example:
        >>> with open_regular("recipe.yaml", what="recipe", error=RecipeError, max_bytes=8 << 20) as f:
        ...     raw = f.read()
    """
    check_regular(path, what=what, error=error, max_bytes=max_bytes)
    file = os.fspath(path)
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise error(f"{file}: cannot read this {what} ({exc.strerror or exc})") from None
    try:
        _check_stat(file, os.fstat(fd), what=what, error=error, max_bytes=max_bytes)
        os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle


def read_regular(path: PathLike, *, what: str, error: type[RecipecError] = CheckpointError,
                 max_bytes: int) -> bytes:
    """All bytes of a regular file of at most ``max_bytes`` (checked before and while reading).

    Raises:
        error: as :func:`open_regular`, or the file grew past ``max_bytes`` while read.
    """
    with open_regular(path, what=what, error=error, max_bytes=max_bytes) as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as exc:
            raise error(f"{os.fspath(path)}: cannot read this {what} ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise error(f"{os.fspath(path)}: more than a {what} may be ({max_bytes:,} bytes); is this the right file?")
    return data


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name one file (device and inode: symlinks and hard links included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def expand_inputs(paths: Iterable[PathLike | None]) -> list[Path]:
    """The files behind checkpoint paths: a sharded index adds its shards, a directory its checkpoints.

    Best effort and never raising: it only widens what :func:`check_output` compares against.
    """
    found: list[Path] = []
    for item in paths:
        if item is None or not os.fspath(item):
            continue
        path = Path(item)
        found.append(path)
        if path.is_dir():
            with contextlib.suppress(OSError):
                found += [p for p in path.iterdir() if p.name.endswith(_CHECKPOINT_SUFFIXES)]
        if path.name.endswith(".index.json"):
            found += _shards_of(path)
    return found


def _shards_of(index: Path) -> list[Path]:
    try:
        data = json.loads(read_regular(index, what="sharded index", max_bytes=_MAX_INDEX))
    except (RecipecError, ValueError):
        return []
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        return []
    return [index.parent / name for name in sorted({v for v in weight_map.values() if isinstance(v, str)})]


def check_output(path: PathLike | None, *, inputs: Iterable[PathLike | None] = (), what: str = "the output",
                 error: type[RecipecError] = OutputError) -> Path:
    """Refuse an output path that is empty, a special file or directory, or one of ``inputs``.

    A symlink to a regular file is fine (it is written through, see :mod:`recipec._atomic`);
    a path that does not exist yet is fine.

    Args:
        path: the user's output path.
        inputs: the files the same command reads (see :func:`expand_inputs` for checkpoints).
        what: what is written, for the message (``"the conversion"``, ``"the features"``).
        error: the error class to raise.

    Returns:
        ``path`` as a Path.

    Raises:
        error: the path must not be written.
    """
    target = require_path(path, what=what, error=error)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise error(f"{target}: cannot write {what} there ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{_shown(target)}: is {kind_of(st.st_mode)}; {what} is written only to a regular file "
                    "(a new one, or one it replaces); choose another path")
    for source in expand_inputs(inputs):
        if same_file(target, source):
            also = "" if os.fspath(source) == os.fspath(target) else f" ({source}, the same file)"
            raise error(f"{target}: is an input of this command{also}; writing {what} there would destroy it; "
                        "choose another path")
    return target
