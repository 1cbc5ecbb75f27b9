"""Atomic file writes: a reader sees the old file or the new one, never a partial one.

The new content goes to a temporary file beside the target, then ``os.replace`` puts it in
place. What that means for the target:

- a symlink is written *through*: the file it leads to is replaced (the temporary file sits
  beside that real file, so the rename stays on one file system) and the link stays a link;
- a device, FIFO, socket or directory is refused (:class:`~recipec.errors.OutputError`,
  exit 2): ``--out /dev/null`` never turns a device node into a regular file;
- permissions: a new file gets ``0666 & ~umask``, as ``open()`` would give it (the
  temporary file is created with mode 0666 and the kernel applies the umask); a file that
  is replaced keeps its own permission bits (someone who made an export read-only to the
  group, or private, keeps that). Ownership is the writer's, as with any new file;
- on any failure the temporary file is removed and the target is untouched. A full disk
  (``ENOSPC``/``EDQUOT``, or a library's write failing while the file system has no space
  left) is reported as ``no space left on device`` naming the user's path
  (:class:`~recipec.errors.DiskFullError`, a ``RunError`` and an ``OSError``, exit 1), and other file system errors name the
  user's path too, never the temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from recipec._files import check_output
from recipec.errors import DiskFullError, Problem, RecipecError, format_path

__all__ = ["atomic_link", "atomic_path", "atomic_write_bytes", "atomic_write_text"]

_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``'s real file; on success it replaces that file at once.

    On any exception the temporary file is removed and ``path`` is left untouched.

    Raises:
        OutputError: ``path`` is empty, a directory or a special file (exit 2).
        DiskFullError: the disk is full (exit 1).
        OSError: another file system error, naming ``path``.

    Example:
        >>> with atomic_path("model.safetensors") as tmp:
        ...     safetensors.torch.save_file(tensors, tmp)
    """
    shown = check_output(path, what="the output")
    real = Path(os.path.realpath(shown))
    with _user_path(shown):
        keep_mode = stat.S_IMODE(os.stat(real).st_mode) if real.exists() else None
        real.parent.mkdir(parents=True, exist_ok=True)
        tmp, created_mode = _create_temp(real)
    try:
        yield tmp
        os.chmod(tmp, keep_mode if keep_mode is not None else created_mode)
        os.replace(tmp, real)
    except BaseException as exc:
        full = isinstance(exc, Exception) and _out_of_space(exc, real.parent)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if full:
            raise _disk_full(f"{shown}: no space left on device; the previous file, if any, is untouched. "
                             "Free some space (or write elsewhere) and run again") from exc
        if isinstance(exc, RecipecError) and str(tmp) in str(exc):
            renamed = _renamed(exc, str(tmp), str(shown))
            if renamed is not None:
                raise renamed from exc
        if (isinstance(exc, OSError) and not isinstance(exc, RecipecError) and exc.errno is not None
                and exc.filename in (None, str(tmp), os.fspath(tmp))):  # about the temporary file, not another
            raise OSError(exc.errno, exc.strerror, os.fspath(shown)) from exc
        raise


@contextlib.contextmanager
def _user_path(shown: Path) -> Iterator[None]:
    """File system errors while preparing the write name the user's path."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _FULL:
            raise _disk_full(f"{shown}: no space left on device; nothing was written") from exc
        raise OSError(exc.errno, exc.strerror, os.fspath(shown)) from exc


def _renamed(exc: RecipecError, tmp: str, shown: str) -> RecipecError | None:
    """The same error naming the user's path instead of the temporary file (None if it cannot be rebuilt)."""
    problems: list[Problem] = []
    for path, text in zip(exc.paths, exc.problems):
        if path:  # a located problem: its text starts with the dotted path, which the constructor adds back
            problems.append((path, text.replace(tmp, shown).removeprefix(f"{format_path(path)}: ")))
        else:
            problems.append(text.replace(tmp, shown))
    try:
        return type(exc)(problems)
    except TypeError:  # a subclass with another signature: keep it as it is
        return None


def _disk_full(message: str) -> DiskFullError:
    error = DiskFullError(message)
    error.errno, error.strerror = errno.ENOSPC, os.strerror(errno.ENOSPC)
    return error


def _create_temp(real: Path) -> tuple[Path, int]:
    """A new empty file ``.<name>.<random>.tmp`` beside ``real``, mode ``0666 & ~umask``; and that mode."""
    for _ in range(100):
        tmp = real.parent / f".{real.name[:200]}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        try:
            return tmp, stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
    raise FileExistsError(errno.EEXIST, "no free temporary file name", os.fspath(real))


def _out_of_space(exc: BaseException, directory: Path) -> bool:
    """Whether a failed write failed for want of space (libraries often hide the errno)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in _FULL:
            return True
        if "No space left on device" in str(seen) or "Disk quota exceeded" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, RecipecError):
        return False
    try:  # e.g. torch.save's "unexpected pos" RuntimeError: look at the disk itself
        fs = os.statvfs(directory)
    except OSError:
        return False
    return fs.f_bavail == 0 or (fs.f_files > 0 and fs.f_favail == 0)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_link(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> str:
    """Put ``src``'s bytes at ``dst`` atomically: a hard link where the file system allows one, else a copy.

    A hard link shares the file: that is safe because recipec replaces files (:func:`atomic_path`),
    never writes into them. ``dst`` that is already ``src`` (the same inode) is left alone.

    Returns:
        ``"link"`` or ``"copy"``: how the file got there.

    Raises:
        OutputError: ``dst`` is a directory or a special file (exit 2).
        OSError: reading ``src`` or writing beside ``dst`` failed, naming the path.
    """
    shown = check_output(dst, what="the output")
    real = Path(os.path.realpath(shown))
    if real.exists() and os.path.samefile(src, real):
        return "link"
    with _user_path(shown):
        real.parent.mkdir(parents=True, exist_ok=True)
        tmp, _ = _create_temp(real)
        tmp.unlink()  # only the free name was wanted: os.link makes the file itself
    try:
        try:
            os.link(src, tmp)
            how = "link"
        except OSError:  # another file system, or one without hard links
            shutil.copyfile(src, tmp)
            how = "copy"
        os.replace(tmp, real)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError) and _out_of_space(exc, real.parent):
            raise _disk_full(f"{shown}: no space left on device; the previous file, if any, is untouched") from exc
        raise
    return how
