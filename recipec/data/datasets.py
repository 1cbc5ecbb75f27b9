"""Where examples come from: the dataset readers and the fingerprint.

:func:`load_examples` reads a dataset into :class:`Examples`: every example's class, and the
split it belongs to when the data says so (``root/train``, ``root/val``, ``root/test``
folders: :mod:`recipec.data.folders`; a manifest's ``split`` column: :mod:`recipec.data.manifest`;
a torchvision dataset's official test set). :mod:`recipec.data.loaders` splits the rest and turns
them into loaders. Image files decode as ImageFolder decodes them (torchvision's default
loader, RGB), whatever lists them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torchvision.datasets.folder import find_classes, make_dataset

from recipec.errors import DatasetError
from recipec.data.examples import Examples, FileSamples
from recipec.data.folders import split_folder_examples
from recipec.data.manifest import manifest_examples
from recipec.recipe.catalog import IMAGE_EXTENSIONS, TORCHVISION

__all__ = ["FAKE_MAX_CLASSES", "FAKE_PER_CLASS", "count_per_class", "fingerprint", "load_examples"]

FAKE_PER_CLASS = 32
FAKE_MAX_CLASSES = 4096


def load_examples(dataset: str, root: str | None, num_classes: int | None, seed: int) -> Examples:
    """Read a dataset: in memory (digits, fake, torchvision arrays) or as a list of files.

    ``imagefolder`` reads ``root/<class>/<image>``, or split folders when ``root/train`` exists;
    ``manifest`` reads the CSV or JSON-lines file ``root`` (:func:`read_manifest`).

    Raises:
        DatasetError: a missing root or file, a malformed manifest, a val/test class that training lacks;
            located at the field it is about (``("root",)``, ``("dataset",)``, ``("num_classes",)``).
    """
    if dataset == "digits":
        pixels, targets = _digits()
        images = torch.as_tensor(pixels, dtype=torch.float32).unsqueeze(1) / 16.0
        return Examples(images, targets, [str(i) for i in range(10)], None, origins={"train": "digits (scikit-learn)"})
    if dataset == "fake":
        return _fake(num_classes, seed)
    if not root:
        what = "the manifest file" if dataset == "manifest" else "the directory that holds it"
        raise DatasetError([(("root",), f"dataset {dataset} needs root: {what}")])
    if dataset == "manifest":
        return manifest_examples(root)
    if not os.path.isdir(root):
        layout = "root/<class>/<image>" if dataset == "imagefolder" else f"root/{TORCHVISION[dataset].folder}"
        raise DatasetError([(("root",), f"{root} does not exist (dataset {dataset} needs {layout})")])
    if dataset == "imagefolder":
        if os.path.isdir(os.path.join(root, "train")):
            return split_folder_examples(root)
        try:
            # empty class folders are judged later, after data.classes chose which classes count
            names, to_index = find_classes(root)
        except (FileNotFoundError, OSError) as e:
            raise DatasetError([(("root",), f"{e} (dataset imagefolder needs root/<class>/<image>, or "
                                            "root/train/<class>/<image>)")]) from e
        source = FileSamples(make_dataset(root, to_index, IMAGE_EXTENSIONS, allow_empty=True), names)
        return Examples(None, list(source.targets), names, source, origins={"train": f"folder {root}"}, base=root)
    return _torchvision(dataset, root)


def _digits() -> tuple[Any, list[int]]:
    """scikit-learn's digits: (1797, 8, 8) pixels from 0 to 16 and their classes, read from the file that
    ``sklearn.datasets.load_digits`` reads, as it reads it (``numpy.loadtxt``), without importing
    scikit-learn, which imports scipy and pandas (about a second); its own reader where the file is elsewhere."""
    spec = importlib.util.find_spec("sklearn")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    file = Path(folders[0], "datasets", "data", "digits.csv.gz") if folders else None
    if file is None or not file.is_file():
        from sklearn.datasets import load_digits  # noqa: PLC0415 (sklearn takes a second to import)

        digits = load_digits()
        return digits.images, [int(t) for t in digits.target]
    data = np.loadtxt(file, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), [int(t) for t in data[:, -1]]


class _TrainThenTest:
    """A torchvision dataset's training set, then its official test set, as one sequence of
    ``(PIL image, target)``: what :class:`FileImages` reads by index."""

    def __init__(self, train: Any, test: Any) -> None:
        self.train, self.test = train, test

    def __len__(self) -> int:
        return len(self.train) + len(self.test)

    def __getitem__(self, i: int) -> Any:
        n = len(self.train)
        return self.train[i] if i < n else self.test[i - n]


def _torchvision(dataset: str, root: str) -> Examples:
    """cifar10, cifar100, mnist, fashionmnist under ``root``: the training set (``train=True``), which
    the run splits into train and val, then the official test set (``train=False``) as the test split.
    The classes are the training set's. Never downloads."""
    name, folder = TORCHVISION[dataset].name, TORCHVISION[dataset].folder
    try:
        kind = getattr(torchvision.datasets, name)
        train, test = kind(root, train=True, download=False), kind(root, train=False, download=False)
    except (RuntimeError, OSError, ValueError, EOFError, AssertionError) as e:  # missing, or a damaged file
        fetch = f"fetch them once with torchvision.datasets.{name}({root!r}, download=True)"
        if isinstance(e, FileNotFoundError) or "not found" in str(e):  # torchvision: "Dataset not found or corrupted"
            problem = f"no {dataset} files under {root} (expected {root}/{folder}; {fetch})"
        else:
            problem = f"cannot read the {dataset} files under {root}: {type(e).__name__}: {e} (remove them and {fetch})"
        raise DatasetError([(("root",), problem)]) from e

    def targets(tv: Any) -> list[int]:
        return [int(t) for t in (tv.targets.tolist() if isinstance(tv.targets, torch.Tensor) else tv.targets)]

    train_targets, test_targets = targets(train), targets(test)
    return Examples(None, train_targets + test_targets, list(train.classes), _TrainThenTest(train, test),
                    ["train"] * len(train_targets) + ["test"] * len(test_targets),
                    origins={"train": f"{dataset} training set under {root}",
                             "test": f"{dataset} official test set under {root}"},
                    base=root)


def _fake(num_classes: int | None, seed: int) -> Examples:
    if num_classes is None:
        raise DatasetError([(("dataset",), "fake needs a class count: set model.head.num_classes")])
    if num_classes > FAKE_MAX_CLASSES:  # it is held in memory: 384 KiB of images per class
        raise DatasetError([(("num_classes",), (
            f"the fake dataset makes {FAKE_PER_CLASS} images of 3x32x32 per class in memory, at most "
            f"{FAKE_MAX_CLASSES} classes (about {FAKE_MAX_CLASSES * FAKE_PER_CLASS * 3 * 32 * 32 * 4 >> 30} GiB); "
            f"got {num_classes}"))])
    g = torch.Generator().manual_seed(seed)
    patterns = torch.rand(num_classes, 1, 3, 32, 32, generator=g)
    noise = 0.25 * torch.randn(num_classes, FAKE_PER_CLASS, 3, 32, 32, generator=g)
    images = (patterns + noise).clamp(0, 1).flatten(0, 1)  # class-major: (classes * 32, 3, 32, 32)
    targets = [c for c in range(num_classes) for _ in range(FAKE_PER_CLASS)]
    return Examples(images, targets, [f"class_{c}" for c in range(num_classes)], None,
                    origins={"train": f"fake ({FAKE_PER_CLASS} random images per class, seed {seed})"})


# --------------------------------------------------------------------------- fingerprint, counts


def fingerprint(examples: Examples, labels: Sequence[Any], parts: dict[str, list[int]]) -> str:
    """sha256 of what each split holds: per example its label and its file (path relative to the
    dataset's directory, size) or, for data held in memory (digits, fake, torchvision arrays), its
    index. ``labels``: per example, a class index (or any JSON value: a multi-label run's list). A
    resume checks it. An empty ``test`` split is left out (so a run without one keeps the
    fingerprint it always had)."""
    samples = getattr(examples.source, "samples", None)

    def item(i: int) -> list[Any]:
        if samples is None:
            return [i, labels[i]]
        path = samples[i][0]
        return [os.path.relpath(path, examples.base or "."), os.path.getsize(path), labels[i]]

    split = {name: [item(i) for i in idx] for name, idx in parts.items() if idx or name != "test"}
    return hashlib.sha256(json.dumps(split, separators=(",", ":")).encode()).hexdigest()


def count_per_class(indices: Sequence[int], labels: Sequence[int], names: Sequence[str]) -> dict[str, int]:
    """Examples of each class among ``indices`` (``labels``: per example, a class index)."""
    counts = dict.fromkeys(names, 0)
    for i in indices:
        counts[names[labels[i]]] += 1
    return counts
