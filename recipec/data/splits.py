"""Which example goes into which split: split folders and a manifest's split column as the data
gives them, else a random, stratified, seeded share of each training class for validation.

The split of a class is seeded by its own index among the dataset's classes, so it is the same
whatever other classes are chosen (``data.classes``), and :func:`recipec.data.heldout.build_split`
finds exactly a run's val examples again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from recipec.errors import DatasetError
from recipec.data.config import Reading, Splitting
from recipec.data.datasets import load_examples
from recipec.data.examples import Examples
from recipec.data.images import without_bad_images

__all__ = ["EPOCH_STRIDE", "Partition", "partition"]

EPOCH_STRIDE = 1_000_003


@dataclass
class Partition:
    """A dataset split: per example its label (-1: not a chosen class), the train/val/test indices,
    where each split came from, the unreadable files left out, and whether there is a val loader."""

    examples: Examples
    labels: list[int]
    classes: list[str]
    indices: tuple[list[int], list[int], list[int]]
    origins: dict[str, str]
    bad: list[str]
    has_val: bool


def partition(reading: Reading, splitting: Splitting, *, model_classes: Sequence[str] | None = None) -> Partition:
    """Read the data and split it: split folders and a manifest's split column as given, else a random,
    stratified share of each training class for val. ``model_classes`` (:func:`build_split`): label by
    them, leaving out other classes, each class split exactly as a run that chose it. ``test_split``
    False (``data.test_split: false``): the data's own test split is left out; there is none.

    Raises:
        DatasetError: as :func:`recipec.data.datasets.load_examples`; an unknown or repeated class
            (``("classes", i)``), a class without training images (``("root",)``), more classes than
            ``num_classes`` (``("num_classes",)``).
    """
    dataset, classes, num_classes = reading.dataset, reading.classes, reading.num_classes
    val_fraction, per_class, seed, test_split = (splitting.val_fraction, splitting.per_class, splitting.seed,
                                                 splitting.test_split)
    examples = load_examples(dataset, reading.root, num_classes, seed)
    bad: list[str] = []
    if reading.on_bad_image == "skip" and hasattr(examples.source, "samples"):
        examples, bad = without_bad_images(examples)
    names = examples.names
    if model_classes is None:
        labels, chosen = _select(examples.targets, names, classes)
    else:  # each class's split is seeded by its own index, so a subset splits as the full set does
        index = {n: i for i, n in enumerate(names)}
        chosen = [index.get(n, -1) for n in model_classes]
        relabel = {c: i for i, c in enumerate(chosen) if c >= 0}
        labels = [relabel.get(t, -1) for t in examples.targets]
    split_of = examples.splits or ["train"] * len(labels)
    pool = [label if s == "train" else -1 for label, s in zip(labels, split_of)]  # only training examples split
    origins = {"train": examples.origins.get("train", dataset)}
    if model_classes is None:
        present = set(pool)
        empty = [names[c] for i, c in enumerate(chosen) if i not in present]
        if empty:
            raise DatasetError([(("root",), f"class {name!r} has no images in the training data "
                                            f"({origins['train']}); add some, or leave it out with data.classes")
                                for name in empty])
        if num_classes is not None and len(chosen) > num_classes:
            raise DatasetError([(("num_classes",), f"is {num_classes} but the data has {len(chosen)} "
                                 f"classes; raise it or pick classes with data.classes")])
    if examples.has("val"):
        train_idx, _ = _split(pool, chosen, 0.0, per_class, seed)
        val_idx = [i for i, s in enumerate(split_of) if s == "val" and labels[i] >= 0]
        origins["val"] = examples.origins["val"]
    else:
        train_idx, val_idx = _split(pool, chosen, val_fraction, per_class, seed)
        origins["val"] = (f"random {100 * val_fraction:g}% of each training class (seed {seed})" if val_fraction > 0
                          else "none (data.val_fraction is 0)")
    if per_class is not None:
        origins["train"] += f", at most {per_class} per class"
    test_idx = [i for i, s in enumerate(split_of) if s == "test" and labels[i] >= 0 and test_split]
    origins["test"] = examples.origins.get("test", "none (the data has no test split)") if test_split or \
        not examples.has("test") else "none (data.test_split is false)"
    return Partition(examples, labels, [names[c] for c in chosen if c >= 0] if model_classes is None
                      else list(model_classes), (train_idx, val_idx, test_idx), origins, bad,
                      examples.has("val") or val_fraction > 0)


def _select(targets: list[int], names: list[str], classes: Sequence[str] | None) -> tuple[list[int], list[int]]:
    """(new label per example, -1 when not selected; the original class index of each new label)."""
    if classes is None:
        return list(targets), list(range(len(names)))
    index = {n: i for i, n in enumerate(names)}
    problems: list[Any] = []
    for i, name in enumerate(classes):
        if name not in index:
            problems.append((("classes", i), f"unknown class {name!r}; available: {', '.join(names)}"))
        elif list(classes).index(name) != i:
            problems.append((("classes", i), f"class {name!r} is listed twice"))
    if problems:
        raise DatasetError(problems)
    chosen = [index[n] for n in classes]
    relabel = {c: i for i, c in enumerate(chosen)}
    return [relabel.get(t, -1) for t in targets], chosen


def _split(labels: list[int], chosen: list[int], val_fraction: float, per_class: int | None,
           seed: int) -> tuple[list[int], list[int]]:
    by_class: list[list[int]] = [[] for _ in chosen]
    for i, label in enumerate(labels):
        if label >= 0:
            by_class[label].append(i)
    train: list[int] = []
    val: list[int] = []
    for label, members in enumerate(by_class):
        if not members:
            continue
        # Seeded per original class, so a class keeps its split whatever else is selected.
        g = torch.Generator().manual_seed(seed * EPOCH_STRIDE + chosen[label])
        order = [members[j] for j in torch.randperm(len(members), generator=g).tolist()]
        n_val = int(len(order) * val_fraction + 0.5)
        if val_fraction > 0 and len(order) >= 2:
            n_val = min(max(n_val, 1), len(order) - 1)
        val += order[:n_val]
        train += order[n_val:][:per_class]
    return sorted(train), sorted(val)
