"""Every exception recipec raises.

Each error inherits :class:`RecipecError` and a built-in, so callers may catch either.
An error can carry several problems (``problems``): the command line prints one
``error:`` line per problem. ``exit_code`` says how the command line ends: 2 when the
input is wrong (the ``ValueError`` family), 1 when the run itself failed.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

RecipePath = tuple[str | int, ...]
Problem = str | tuple[RecipePath, str]

__all__ = [
    "BuildInterrupted",
    "CheckpointError",
    "DatasetError",
    "DeviceError",
    "DiskFullError",
    "ExportError",
    "GroupError",
    "HubError",
    "ModelError",
    "OutputError",
    "RecipeError",
    "RecipecError",
    "RecipecWarning",
    "RunDirectoryError",
    "RunError",
    "TrackingError",
    "TransferError",
    "UnreadableImageError",
    "UnsafeCheckpointError",
    "UntrustedFactoryError",
    "WeightsUnavailableError",
    "format_path",
    "relabeled",
    "warn",
]


class RecipecError(Exception):
    """Base of every recipec error.

    Args:
        problems: one message, or several (each becomes its own ``error:`` line). A problem
            caused by a recipe value is a ``(recipe_path, message)`` pair, e.g.
            ``(("source", "exclude", 0), "matched no key")``: it reads
            ``source.exclude.0: matched no key``, and the command line prefixes the
            ``file:line:col`` of that value when it knows the recipe's source map.
    """

    exit_code = 2

    def __init__(self, problems: Problem | Iterable[Problem]) -> None:
        items: list[Problem] = [problems] if isinstance(problems, (str, tuple)) else list(problems)
        if not items:
            raise AssertionError("a RecipecError needs at least one problem")
        self.paths: list[RecipePath | None] = []
        self.messages: list[str] = []   # each problem without its path
        self.problems: list[str] = []
        for item in items:
            if isinstance(item, tuple):
                path, message = item
                self.paths.append(tuple(path))
                self.messages.append(message)
                self.problems.append(f"{format_path(path)}: {message}" if path else message)
            else:
                self.paths.append(None)
                self.messages.append(item)
                self.problems.append(item)
        super().__init__("\n".join(self.problems))

    def relabeled(self, fields: Mapping[str, RecipePath] | None = None, *, prefix: RecipePath = (),
                  default: RecipePath | None = None) -> RecipecError:
        """The same error with the field keys of a lower layer turned into recipe paths.

        Code below the compiler never knows the recipe: it names the field of its own config
        (``("root",)``, ``("exclude", 0)``). The compiler, which built that config from the recipe,
        relabels: a path whose first key is in ``fields`` becomes that recipe path plus the rest
        (``{"root": ("data", "root")}``); any other path gets ``prefix`` in front
        (``prefix=("source",)``: ``("exclude", 0)`` -> ``source.exclude.0``); a problem without a
        path gets ``default`` (or stays without one).
        """
        problems: list[Problem] = []
        for path, message in zip(self.paths, self.messages):
            if path is None:
                problems.append((default, message) if default is not None else message)
            elif fields is not None and path and isinstance(path[0], str) and path[0] in fields:
                problems.append(((*fields[path[0]], *path[1:]), message))
            else:
                problems.append(((*prefix, *path), message))
        new = type(self)(problems)
        new.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("paths", "messages", "problems")})
        return new


@contextmanager
def relabeled(fields: Mapping[str, RecipePath] | None = None, *, prefix: RecipePath = (),
              default: RecipePath | None = None) -> Iterator[None]:
    """Re-raise a :class:`RecipecError` of the block with its field keys as recipe paths (see
    :meth:`RecipecError.relabeled`); the compiler wraps each call into a lower layer in one."""
    try:
        yield
    except RecipecError as exc:
        raise exc.relabeled(fields, prefix=prefix, default=default) from exc


def format_path(path: Sequence[str | int]) -> str:
    """``("freeze", "unfreeze", 3)`` -> ``freeze.unfreeze.3``."""
    return ".".join(str(p) for p in path)


class RecipeError(RecipecError, ValueError):
    """A recipe is wrong: syntax, a key, a type, a value, or a cross-field rule.

    Each problem reads ``file:line:col: dotted.path: message`` where the location is known.
    """


class CheckpointError(RecipecError, ValueError):
    """A checkpoint file is missing, corrupt, truncated or not a checkpoint at all."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle needs a global that is not allowed; nothing in it was executed.

    ``refused`` names those globals, so that a command line can word the fix as its own flag.
    """

    refused: Sequence[str] = ()


class TransferError(RecipecError, ValueError):
    """Weights cannot be transferred as the recipe says (unmatched pattern, shape, missing key)."""


class ModelError(RecipecError, ValueError):
    """An architecture, a factory or a head location that cannot be built."""


class UntrustedFactoryError(ModelError):
    """A file's recipe names a custom factory the caller did not trust; nothing was imported."""


class WeightsUnavailableError(ModelError):
    """Pretrained weights are neither in the local cache nor downloadable."""


class GroupError(RecipecError, ValueError):
    """Layer groups do not partition the parameters, or a schedule names an unknown group."""


class DatasetError(RecipecError, ValueError):
    """A dataset that is not there, or does not fit the recipe (missing root, unknown class)."""


class UnreadableImageError(DatasetError):
    """An image file that cannot be decoded (the message names it).

    A DataLoader worker's exception is re-raised in the main process as
    ``type(exc)("Caught ... Original Traceback ...")``; only the original message is kept,
    so the user sees one ``error:`` line naming the file, not a traceback.
    """

    def __init__(self, problems: Problem | Iterable[Problem]) -> None:
        if isinstance(problems, str) and problems.startswith("Caught ") and "Traceback" in problems:
            problems = problems.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(problems)


class RunDirectoryError(RecipecError, ValueError):
    """The run directory does not allow what was asked (a run already there, nothing to resume)."""


class TrackingError(RecipecError, ValueError):
    """A tracking store (``log.mlflow.tracking_uri``) that cannot be reached or used, found before training."""


class HubError(RecipecError, ValueError):
    """Sharing on the Hugging Face Hub refused before anything is sent: no token, a card that does not parse,
    ``huggingface_hub`` missing, or the Hub refusing the token or the repository."""


class OutputError(RecipecError, ValueError):
    """An output path recipec must not write: empty, a special file (device, FIFO, directory), or an input."""


class DeviceError(RecipecError, ValueError):
    """The requested device does not exist on this machine."""


class ExportError(RecipecError, RuntimeError):
    """An export failed or did not verify (e.g. ONNX parity beyond tolerance)."""

    exit_code = 1


class RunError(RecipecError, RuntimeError):
    """The run itself failed after its inputs were accepted."""

    exit_code = 1


class DiskFullError(RunError, OSError):
    """No space left on device while writing a file; the previous file is intact (exit 1).

    Also an ``OSError`` (``errno.ENOSPC``), for callers that catch file system errors.
    """

    def __str__(self) -> str:  # OSError's would print "[Errno 28] ..." instead of the message
        return "\n".join(self.problems)


class BuildInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a build: which run it was and the newest training state it kept (None: none yet).

    A ``KeyboardInterrupt``, so code that catches that still does; the command line prints how
    to resume and exits 130.
    """

    def __init__(self, run: str, checkpoint: str | None, epoch: int | None) -> None:
        self.run, self.checkpoint, self.epoch = run, checkpoint, epoch
        super().__init__(f"interrupted; kept {checkpoint}" if checkpoint else "interrupted before any checkpoint")


class RecipecWarning(UserWarning):
    """Something the user must not miss that does not stop the command (a damaged checkpoint passed over, ...).

    The command line prints it on stderr as ``warning: <text>``, also under ``--quiet`` (which
    silences progress, not warnings); from Python it is an ordinary warning, which
    ``warnings.filterwarnings`` can turn into an error or silence.
    """


def warn(text: str) -> None:
    """Issue ``text`` as a :class:`RecipecWarning` (the CLI prints ``warning: <text>`` on stderr)."""
    warnings.warn(text, RecipecWarning, stacklevel=2)
