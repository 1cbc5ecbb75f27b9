"""What ``recipec init`` reads of the data, cheaply and torch-free: :func:`read_layout`.

Folder names for class folders and split folders (``root/train`` fixes the classes, as
:mod:`recipec.data.folders` reads them), the label and split columns of a manifest (its training
rows fix the classes, as :mod:`recipec.data.manifest` reads them; more than one label on a row
means ``task: multilabel``), and nothing but a look for one image per class folder: the images
are decoded by ``recipec plan``, which reports every one it cannot read.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass

from recipec._files import read_regular
from recipec.errors import DatasetError
from recipec.recipe.catalog import IMAGE_EXTENSIONS, MANIFEST_MAX_BYTES, MANIFEST_SUFFIXES, VAL_FOLDERS

__all__ = ["DataLayout", "read_layout"]



@dataclass(frozen=True)
class DataLayout:
    """What init read: the dataset kind, its root (absolute; None for digits), the classes, sorted,
    as the training data fixes them, how the data is laid out (in words, for the comment), whether
    it has a validation split of its own, and whether an image may have several labels."""

    dataset: str
    root: str | None
    classes: tuple[str, ...]
    layout: str
    has_val: bool = False
    multilabel: bool = False


def read_layout(data: str | None) -> DataLayout:
    """The classes and layout of ``data``: class folders, split folders, a manifest file, or None for digits.

    Raises:
        DatasetError: no such path, no classes, a class folder without images, a class of val/ or
            test/ that train/ lacks, a manifest without a label column; each names the path.
    """
    if data is None:
        return DataLayout("digits", None, tuple(str(i) for i in range(10)), "the 8x8 digits scikit-learn ships")
    root = os.path.abspath(os.path.expanduser(data))
    if os.path.isfile(root) and root.lower().endswith(MANIFEST_SUFFIXES):
        return _manifest_layout(root)
    if not os.path.isdir(root):
        why = "is not a folder or a manifest (.csv, .jsonl)" if os.path.exists(root) else "no such folder or file"
        raise DatasetError(f"{data}: {why}; give a folder of <class>/<image>, one with train/ val/ test/ "
                           "folders of <class>/<image>, or a manifest file (.csv with path,label[,split], or .jsonl)")
    train = os.path.join(root, "train")
    split = os.path.isdir(train)
    classes = _folders(train if split else root)
    if not classes:
        manifests = sorted(n for n in os.listdir(root) if n.lower().endswith(MANIFEST_SUFFIXES))
        hint = f"; for a manifest, name the file: recipec init {os.path.join(data, manifests[0])}" if manifests else ""
        where = f"{data}/train" if split else data
        raise DatasetError(f"{where}: no class folders (recipec init reads <class>/<image> folders, "
                           f"train/<class>/<image> split folders, or a manifest file){hint}")
    present: list[str] = []
    problems = [f"{os.path.join(data, 'train' if split else '', c)}: a class folder without images "
                f"({', '.join(IMAGE_EXTENSIONS)}); add some or remove the folder"
                for c in classes if not _has_image(os.path.join(train if split else root, c))]
    if split:
        present = [n for n in VAL_FOLDERS if os.path.isdir(os.path.join(root, n))]
        if len(present) > 1:
            problems.append(f"{data}: has {' and '.join(n + '/' for n in present)}: one validation folder, please")
        splits = ["train", *present[:1], *(["test"] if os.path.isdir(os.path.join(root, "test")) else [])]
        problems += [f"{os.path.join(data, s, c)}: class {c!r} is not a class of {data}/train; the training folder "
                     f"fixes the classes: add {c}/ under train/ or take it out of {s}/"
                     for s in splits[1:] for c in _folders(os.path.join(root, s)) if c not in classes]
    if problems:
        raise DatasetError(problems)
    _need_two(classes, data)
    layout = f"the split folders {'/, '.join(splits)}/ of {data}" if split else f"the class folders of {data}"
    return DataLayout("imagefolder", root, tuple(classes), layout, has_val=split and bool(present))


def _manifest_layout(path: str) -> DataLayout:
    name = os.path.basename(path)
    text = read_regular(path, what="manifest", error=DatasetError, max_bytes=MANIFEST_MAX_BYTES)
    try:
        content = text.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc}); save the manifest as UTF-8") from None
    rows = _jsonl_rows(content, name) if path.lower().endswith((".jsonl", ".ndjson")) else _csv_rows(content, name)
    train = [labels for labels, split in rows if split in ("", "train")]
    classes = sorted({label for labels in train for label in labels})
    multilabel = any(len(labels) > 1 for labels in train)  # an empty label is the multiclass reader's to refuse
    if not classes:
        raise DatasetError(f"{path}: no training row has a label (rows with split train or none fix the classes)")
    if not multilabel:
        _need_two(classes, path)
    splits = [s for s in ("train", "val", "test") if any(split == s for _, split in rows)]
    layout = f"the manifest {name}" + (f" (splits {', '.join(splits)})" if splits else "")
    return DataLayout("manifest", path, tuple(classes), layout, has_val="val" in splits, multilabel=multilabel)


def _csv_rows(text: str, name: str) -> list[tuple[list[str], str]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader, [])]
        if "path" not in header or "label" not in header:
            raise DatasetError(f"{name} line 1: the header must be path,label[,split], got {','.join(header)!r}")
        label, split = header.index("label"), header.index("split") if "split" in header else None
        return [([p.strip() for p in cells[label].split(";") if p.strip()],
                 cells[split].strip() if split is not None and split < len(cells) else "")
                for cells in reader if any(c.strip() for c in cells) and label < len(cells)]
    except csv.Error as exc:
        raise DatasetError(f"{name} line {reader.line_num}: {exc}") from None


def _jsonl_rows(text: str, name: str) -> list[tuple[list[str], str]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DatasetError(f"{name} line {number}: not JSON ({exc})") from None
        label = row.get("label") if isinstance(row, dict) else None
        labels = label if isinstance(label, list) else [] if label is None else str(label).split(";")
        rows.append(([str(x).strip() for x in labels if str(x).strip()], str(row.get("split") or "").strip()
                     if isinstance(row, dict) else ""))
    return rows


def _folders(folder: str) -> list[str]:
    """The class folders as torchvision's ImageFolder finds them: every sub-folder, sorted."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir())


def _has_image(folder: str) -> bool:
    for _, _, files in os.walk(folder, followlinks=True):
        if any(f.lower().endswith(IMAGE_EXTENSIONS) for f in files):
            return True
    return False


def _need_two(classes: list[str], data: str) -> None:
    if len(classes) < 2:
        raise DatasetError(f"{data}: one class ({classes[0]}); a classifier needs two or more")
