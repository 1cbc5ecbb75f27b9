"""What a dataset reader returns (:class:`Examples`) and the datasets that read examples by index.

Shared by the readers (:mod:`recipec.data.datasets`, :mod:`recipec.data.folders`,
:mod:`recipec.data.manifest`) and the loaders (:mod:`recipec.data.transforms`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.datasets.folder import default_loader

from recipec.errors import UnreadableImageError

__all__ = ["SHOWN_PROBLEMS", "SPLITS", "Examples", "FileImages", "FileSamples", "TensorImages", "listed"]

SPLITS = ("train", "val", "test")
SHOWN_PROBLEMS = 20  # a message lists at most this many problems of one file


@dataclass
class Examples:
    """A dataset as read: what :func:`load_examples` returns.

    ``images`` (n, c, h, w) in [0, 1] for data held in memory, else None and ``source`` gives
    ``(PIL image, target)`` by index (``source.samples`` lists ``(file, target)`` for files).
    ``splits`` names each example's split when the data fixes it, else None (all are training
    examples, of which a random share is held out); ``origins`` says where each given split came
    from; ``base`` is the directory file paths are fingerprinted relative to.
    """

    images: torch.Tensor | None
    targets: list[int]
    names: list[str]
    source: Any
    splits: list[str] | None = None
    origins: dict[str, str] = field(default_factory=dict)
    base: str | None = None

    def has(self, split: str) -> bool:
        return self.splits is not None and split in self.splits


class FileSamples:
    """``(file, class index)`` pairs, read as ``(RGB PIL image, class index)``, as ImageFolder reads them."""

    def __init__(self, samples: list[tuple[str, int]], classes: list[str]) -> None:
        self.samples, self.classes = samples, classes
        self.targets = [t for _, t in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, target = self.samples[i]
        return default_loader(path), target


class TensorImages(Dataset):
    def __init__(self, images: torch.Tensor, labels: Sequence[Any], transform: Callable | None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        x = self.images[i]
        return (self.transform(x) if self.transform else x), self.labels[i]


class FileImages(Dataset):
    def __init__(self, source: Any, indices: list[int], labels: Sequence[Any], transform: Callable) -> None:
        self.source, self.indices, self.labels, self.transform = source, indices, labels, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        index = self.indices[i]
        try:
            image = self.source[index][0]
        except Exception as exc:  # PIL raises many types: OSError, ValueError, SyntaxError, DecompressionBombError...
            if not isinstance(self.source, FileSamples):  # arrays in memory: not a file's fault
                raise
            path = self.source.samples[index][0]
            raise UnreadableImageError(f"unreadable image {path}: {str(exc) or type(exc).__name__} (fix or remove "
                                       "it, or set data.on_bad_image: skip; `recipec plan` lists every unreadable "
                                       "image)") from exc
        return self.transform(image), self.labels[i]


def listed(names: Sequence[str], most: int = 10) -> str:
    """The first ``most`` names, comma-separated, with ``...`` when there are more."""
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")
