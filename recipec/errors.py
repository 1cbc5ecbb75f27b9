"""Every exception recipec raises.

Each error inherits :class:`RecipecError` and a built-in, so callers may catch either.
An error can carry several problems (``problems``): the command line prints one
``error:`` line per problem. ``exit_code`` says how the command line ends: 2 when the
input is wrong (the ``ValueError`` family), 1 when the run itself failed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

RecipePath = tuple[str | int, ...]
Problem = str | tuple[RecipePath, str]

__all__ = [
    "CheckpointError",
    "DatasetError",
    "DeviceError",
    "ExportError",
    "GroupError",
    "ModelError",
    "RecipeError",
    "RecipecError",
    "RunDirectoryError",
    "RunError",
    "TransferError",
    "UnsafeCheckpointError",
    "WeightsUnavailableError",
    "format_path",
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
        self.problems: list[str] = []
        for item in items:
            if isinstance(item, tuple):
                path, message = item
                self.paths.append(tuple(path))
                self.problems.append(f"{format_path(path)}: {message}" if path else message)
            else:
                self.paths.append(None)
                self.problems.append(item)
        super().__init__("\n".join(self.problems))


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
    """A pickle needs a global that is not allowed; nothing in it was executed."""


class TransferError(RecipecError, ValueError):
    """Weights cannot be transferred as the recipe says (unmatched pattern, shape, missing key)."""


class ModelError(RecipecError, ValueError):
    """An architecture, a factory or a head location that cannot be built."""


class WeightsUnavailableError(ModelError):
    """Pretrained weights are neither in the local cache nor downloadable."""


class GroupError(RecipecError, ValueError):
    """Layer groups do not partition the parameters, or a schedule names an unknown group."""


class DatasetError(RecipecError, ValueError):
    """A dataset that is not there, or does not fit the recipe (missing root, unknown class)."""


class RunDirectoryError(RecipecError, ValueError):
    """The run directory does not allow what was asked (a run already there, nothing to resume)."""


class DeviceError(RecipecError, ValueError):
    """The requested device does not exist on this machine."""


class ExportError(RecipecError, RuntimeError):
    """An export failed or did not verify (e.g. ONNX parity beyond tolerance)."""

    exit_code = 1


class RunError(RecipecError, RuntimeError):
    """The run itself failed after its inputs were accepted."""

    exit_code = 1
