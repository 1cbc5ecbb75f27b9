"""Split folders (``root/train``, ``root/val``, ``root/test``, each ``<class>/<image>``) and other
data to evaluate a model on (:func:`override_examples`: a class folder, split folders or a manifest).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from torchvision.datasets.folder import make_dataset

from recipec.errors import DatasetError
from recipec.data.examples import SHOWN_PROBLEMS, SPLITS, Examples, FileSamples, listed
from recipec.recipe.catalog import VAL_FOLDERS
from recipec.data.manifest import read_manifest
from recipec.recipe.catalog import IMAGE_EXTENSIONS

__all__ = ["override_examples", "split_folder", "split_folder_examples"]

# names of the validation folder next to train/ (Roboflow and others write valid/)


def split_folder(root: str, split: str) -> str | None:
    """The folder of ``split`` under ``root`` (``val`` may be ``valid/`` or ``validation/``), None when absent.

    Raises:
        DatasetError: two validation folders (``val/`` and ``valid/``).
    """
    names = VAL_FOLDERS if split == "val" else (split,)
    found = [os.path.join(root, n) for n in names if os.path.isdir(os.path.join(root, n))]
    if len(found) > 1:
        raise DatasetError([(("root",), f"{root} has {' and '.join(found)}: one validation folder, please "
                                        "(merge them or rename one)")])
    return found[0] if found else None


def split_folder_examples(root: str) -> Examples:
    """``root/train``, ``root/val`` and ``root/test``, each ``<class>/<image>``: the classes are the
    training folder's (sorted); a class folder in val/ or test/ that train/ lacks is an error."""
    train = os.path.join(root, "train")
    names = sorted(e.name for e in os.scandir(train) if e.is_dir())
    if not names:
        raise DatasetError([(("root",), f"{train} has no class folders (split folders need "
                                        "root/train/<class>/<image>)")])
    to_index = {n: i for i, n in enumerate(names)}
    samples: list[tuple[str, int]] = []
    splits: list[str] = []
    origins: dict[str, str] = {}
    problems: list[Any] = []
    for split in SPLITS:
        folder = split_folder(root, split)
        if folder is None:
            continue
        classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
        problems += [(("root",), f"class folder {os.path.join(folder, c)} is not a class of the training "
                                 f"folder {train} ({listed(names)}); the training folder fixes the classes: "
                                 f"add {c}/ under train/ or take it out of {os.path.basename(folder)}/")
                     for c in classes if c not in to_index]
        found = make_dataset(folder, {c: to_index[c] for c in classes if c in to_index}, IMAGE_EXTENSIONS,
                             allow_empty=True)
        samples += found
        splits += [split] * len(found)
        origins[split] = f"folder {folder}"
    if problems:
        raise DatasetError(problems)
    return Examples(None, [t for _, t in samples], names, FileSamples(samples, names), splits, origins, base=root)


def override_examples(path: str, split: str, classes: Sequence[str]) -> Examples:
    """Other data to evaluate a model on, labelled by the model's ``classes``: a directory of
    ``<class>/<image>``, one with split folders (``split`` picks one), or a manifest (its ``split``
    rows, or all rows when it has no split column).

    Raises:
        DatasetError: no such path, no such split (saying which exist), a class the model lacks, no images.
    """
    to_index = {n: i for i, n in enumerate(classes)}
    if os.path.isdir(path):
        have = [s for s in SPLITS if split_folder(path, s) is not None]
        folder = split_folder(path, split) if have else path
        if folder is None:
            raise DatasetError(f"{path} has no {split} folder (it has {', '.join(h + '/' for h in have)}); choose "
                               f"the split {have[0]}, or give a folder of <class>/<image>")
        found = sorted(e.name for e in os.scandir(folder) if e.is_dir())
        unknown = [f"{os.path.join(folder, c)}: class {c!r} is not one of the model's classes ({listed(classes)}); "
                   "take the folder out, or evaluate a model trained with it" for c in found if c not in to_index]
        if unknown:
            raise DatasetError(unknown)
        samples = make_dataset(folder, {c: to_index[c] for c in found}, IMAGE_EXTENSIONS, allow_empty=True)
        origin, base = f"folder {folder}", folder
    elif os.path.exists(path):
        rows = read_manifest(path, at=())
        name = os.path.basename(path)
        with_split = any(r.split is not None for r in rows)
        if with_split:
            rows = [r for r in rows if (r.split or "train") == split]
            if not rows:
                raise DatasetError(f"{path}: no rows of split {split}; choose a split its rows have")
        problems = [f"{name} line {r.line}: {len(r.labels)} labels ({';'.join(r.labels) or 'empty'}); a multiclass "
                    "model needs one label per row" if len(r.labels) != 1 else
                    f"{name} line {r.line}: label {r.labels[0]!r} is not one of the model's classes "
                    f"({listed(classes)})" for r in rows if len(r.labels) != 1 or r.labels[0] not in to_index]
        if problems:
            raise DatasetError(problems[:SHOWN_PROBLEMS])
        samples = [(r.path, to_index[r.labels[0]]) for r in rows]
        origin = f"manifest {path}, " + (f"{split} rows" if with_split else "all rows (no split column)")
        base = os.path.dirname(os.path.abspath(path))
    else:
        raise DatasetError(f"{path}: no such directory or manifest file (give a folder of <class>/<image>, one with "
                           "train/val/test folders, or a .csv/.jsonl manifest)")
    if not samples:
        raise DatasetError(f"{origin}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return Examples(None, [t for _, t in samples], list(classes), FileSamples(samples, list(classes)),
                    origins={split: origin}, base=base)
