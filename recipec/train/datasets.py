"""Where examples come from: the dataset readers, split folders, the manifest, bad images, the fingerprint.

:func:`load_examples` reads a dataset into :class:`Examples`: every example's class, and the
split it belongs to when the data says so (``root/train``, ``root/val``, ``root/test``
folders; a manifest's ``split`` column). :mod:`recipec.train.data` splits the rest and turns
them into loaders. Image files decode as ImageFolder decodes them (torchvision's default
loader, RGB), whatever lists them.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torchvision
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader, find_classes, make_dataset

from recipec.errors import DatasetError, UnreadableImageError

__all__ = ["DATASETS", "MANIFEST_MAX_BYTES", "SPLITS", "Examples", "FileImages", "FileSamples", "ManifestRow",
           "TensorImages", "count_per_class", "fingerprint", "load_examples", "manifest_examples", "override_examples",
           "read_manifest", "split_folder", "split_folder_examples", "without_bad_images"]

DATASETS = ("imagefolder", "manifest", "digits", "fake", "cifar10", "cifar100", "mnist", "fashionmnist")
SPLITS = ("train", "val", "test")
# names of the validation folder next to train/ (Roboflow and others write valid/)
VAL_FOLDERS = ("val", "valid", "validation")
MANIFEST_MAX_BYTES = 256 << 20  # ~2 million rows of long paths
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson")
FAKE_PER_CLASS = 32
FAKE_MAX_CLASSES = 4096
_SHOWN_PROBLEMS = 20
_TORCHVISION = {"cifar10": ("CIFAR10", "cifar-10-batches-py"), "cifar100": ("CIFAR100", "cifar-100-python"),
                "mnist": ("MNIST", "MNIST/raw"), "fashionmnist": ("FashionMNIST", "FashionMNIST/raw")}


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


@dataclass(frozen=True)
class ManifestRow:
    """One row of a manifest: ``path`` resolved against the manifest's directory (an absolute path
    is kept as it is), its labels in the order written (none when the label is empty), its split
    (None when the row has none) and its line number in the file, for messages."""

    path: str
    labels: tuple[str, ...]
    split: str | None
    line: int = 0


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
        except (OSError, ValueError, SyntaxError) as exc:  # what PIL raises for a file it cannot decode
            path = self.source.samples[index][0] if hasattr(self.source, "samples") else f"example {index}"
            raise UnreadableImageError(f"unreadable image {path}: {exc} (fix or remove it, or set data.on_bad_image: "
                                       "skip; `recipec plan` lists every unreadable image)") from exc
        return self.transform(image), self.labels[i]


def load_examples(dataset: str, root: str | None, num_classes: int | None, seed: int) -> Examples:
    """Read a dataset: in memory (digits, fake, torchvision arrays) or as a list of files.

    ``imagefolder`` reads ``root/<class>/<image>``, or split folders when ``root/train`` exists;
    ``manifest`` reads the CSV or JSON-lines file ``root`` (:func:`read_manifest`).

    Raises:
        DatasetError: a missing root or file, a malformed manifest, a val/test class that training lacks.
    """
    if dataset == "digits":
        from sklearn.datasets import load_digits  # imported here: sklearn takes a second to import

        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        return Examples(images, [int(t) for t in digits.target], [str(i) for i in range(10)], None,
                        origins={"train": "digits (scikit-learn)"})
    if dataset == "fake":
        return _fake(num_classes, seed)
    if not root:
        what = "the manifest file" if dataset == "manifest" else "the directory that holds it"
        raise DatasetError([(("data", "root"), f"dataset {dataset} needs root: {what}")])
    if dataset == "manifest":
        return manifest_examples(root)
    if not os.path.isdir(root):
        layout = "root/<class>/<image>" if dataset == "imagefolder" else f"root/{_TORCHVISION[dataset][1]}"
        raise DatasetError([(("data", "root"), f"{root} does not exist (dataset {dataset} needs {layout})")])
    if dataset == "imagefolder":
        if os.path.isdir(os.path.join(root, "train")):
            return split_folder_examples(root)
        try:
            # empty class folders are judged later, after data.classes chose which classes count
            names, to_index = find_classes(root)
        except (FileNotFoundError, OSError) as e:
            raise DatasetError([(("data", "root"), f"{e} (dataset imagefolder needs root/<class>/<image>, or "
                                                   "root/train/<class>/<image>)")]) from e
        source = FileSamples(make_dataset(root, to_index, IMG_EXTENSIONS, allow_empty=True), names)
        return Examples(None, list(source.targets), names, source, origins={"train": f"folder {root}"}, base=root)
    name, folder = _TORCHVISION[dataset]
    try:
        tv = getattr(torchvision.datasets, name)(root, train=True, download=False)
    except (RuntimeError, OSError) as e:
        raise DatasetError([(("data", "root"), f"no {dataset} files under {root} (expected {root}/{folder}; "
                             f"fetch them once with torchvision.datasets.{name}({root!r}, download=True))")]) from e
    targets = tv.targets.tolist() if isinstance(tv.targets, torch.Tensor) else list(tv.targets)
    return Examples(None, [int(t) for t in targets], list(tv.classes), tv,
                    origins={"train": f"{dataset} training set under {root}"}, base=root)


def _fake(num_classes: int | None, seed: int) -> Examples:
    if num_classes is None:
        raise DatasetError([(("data", "dataset"), "fake needs a class count: set model.head.num_classes")])
    if num_classes > FAKE_MAX_CLASSES:  # it is held in memory: 384 KiB of images per class
        raise DatasetError([(("model", "head", "num_classes"), (
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


# --------------------------------------------------------------------------- split folders


def split_folder(root: str, split: str) -> str | None:
    """The folder of ``split`` under ``root`` (``val`` may be ``valid/`` or ``validation/``), None when absent.

    Raises:
        DatasetError: two validation folders (``val/`` and ``valid/``).
    """
    names = VAL_FOLDERS if split == "val" else (split,)
    found = [os.path.join(root, n) for n in names if os.path.isdir(os.path.join(root, n))]
    if len(found) > 1:
        raise DatasetError([(("data", "root"), f"{root} has {' and '.join(found)}: one validation folder, please "
                                               "(merge them or rename one)")])
    return found[0] if found else None


def split_folder_examples(root: str) -> Examples:
    """``root/train``, ``root/val`` and ``root/test``, each ``<class>/<image>``: the classes are the
    training folder's (sorted); a class folder in val/ or test/ that train/ lacks is an error."""
    train = os.path.join(root, "train")
    names = sorted(e.name for e in os.scandir(train) if e.is_dir())
    if not names:
        raise DatasetError([(("data", "root"), f"{train} has no class folders (split folders need "
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
        problems += [(("data", "root"), f"class folder {os.path.join(folder, c)} is not a class of the training "
                                        f"folder {train} ({_listed(names)}); the training folder fixes the classes: "
                                        f"add {c}/ under train/ or take it out of {os.path.basename(folder)}/")
                     for c in classes if c not in to_index]
        found = make_dataset(folder, {c: to_index[c] for c in classes if c in to_index}, IMG_EXTENSIONS,
                             allow_empty=True)
        samples += found
        splits += [split] * len(found)
        origins[split] = f"folder {folder}"
    if problems:
        raise DatasetError(problems)
    return Examples(None, [t for _, t in samples], names, FileSamples(samples, names), splits, origins, base=root)


# --------------------------------------------------------------------------- manifest


def read_manifest(path: str | os.PathLike[str], *, at: tuple[str | int, ...] = ("data", "root")) -> list[ManifestRow]:
    """Read a manifest: a CSV file with the header ``path,label[,split]`` or JSON lines
    ``{"path": ..., "label": ...[, "split": ...]}`` (``.jsonl``).

    Paths are relative to the manifest's directory (absolute paths are taken as they are);
    ``label`` holds one label, several separated by ``;`` (a JSON line may give a list), or
    none (empty); ``split`` is ``train``, ``val``, ``test`` or empty. Other columns are ignored.
    Every listed file must exist, once.

    Returns:
        The rows in file order, blank lines left out.

    Args:
        path: the manifest file.
        at: where problems are located in the recipe (``()``: nowhere, for a file given on the command line).

    Raises:
        DatasetError: located at ``at``, one problem per bad line (``manifest.csv line 7: ...``):
            a missing column, an empty path, a file that is not there, an unknown split, a duplicate.

    Example:
        >>> rows = read_manifest("data/labels.csv")
        >>> rows[0]
        ManifestRow(path='/abs/data/images/0001.png', labels=('cat',), split='train', line=2)
    """
    from recipec._files import read_regular

    file = os.fspath(path)
    name = os.path.basename(file)
    if not file.lower().endswith(MANIFEST_SUFFIXES):
        raise DatasetError([(at, f"{file}: a manifest is a .csv file (header path,label[,split]) or "
                                               "a .jsonl file (one JSON object per line); rename it so")])
    try:
        raw = read_regular(file, what="manifest", error=DatasetError, max_bytes=MANIFEST_MAX_BYTES)
    except DatasetError as exc:
        raise DatasetError([(at, p) for p in exc.problems]) from None
    try:
        text = raw.decode("utf-8-sig")  # a spreadsheet's byte order mark is not part of the first column
    except UnicodeDecodeError as exc:
        raise DatasetError([(at, f"{file}: not UTF-8 text ({exc}); save the manifest as UTF-8")]) from None
    base = os.path.dirname(os.path.abspath(file))
    problems: list[str] = []
    entries = _jsonl_entries(text, name, problems) if file.lower().endswith((".jsonl", ".ndjson")) \
        else _csv_entries(text, name, problems)
    rows: list[ManifestRow] = []
    seen: dict[str, int] = {}
    for line, where, label, split in entries:
        if not where.strip():
            problems.append(f"{name} line {line}: empty path")
            continue
        resolved = os.path.normpath(os.path.join(base, os.path.expanduser(where)))
        if split not in (None, *SPLITS):
            problems.append(f"{name} line {line}: unknown split {split!r}; use train, val, test or leave it empty")
        if not os.path.isfile(resolved):
            why = "is a directory" if os.path.isdir(resolved) else "no such file"
            problems.append(f"{name} line {line}: {where}: {why} ({resolved}; paths are relative to the manifest's "
                            f"directory {base}, absolute paths are taken as they are)")
        elif resolved in seen:
            problems.append(f"{name} line {line}: {where} is listed already on line {seen[resolved]}; list each "
                            "image once")
        seen.setdefault(resolved, line)
        labels = tuple(dict.fromkeys(part.strip() for part in label if part.strip()))
        rows.append(ManifestRow(resolved, labels, split, line))
    if not problems and not rows:
        problems.append(f"{file}: no rows; list one image per row (header path,label[,split])")
    if problems:
        problems.sort(key=lambda p: int(p[len(name) + 6:].split(":", 1)[0]) if p.startswith(f"{name} line ") else 0)
        shown = problems[:_SHOWN_PROBLEMS]
        if len(problems) > _SHOWN_PROBLEMS:
            shown.append(f"{name}: {len(problems) - _SHOWN_PROBLEMS} more problem(s) not shown")
        raise DatasetError([(at, p) for p in shown])
    return rows


def _csv_entries(text: str, name: str, problems: list[str]) -> list[tuple[int, str, list[str], str | None]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        problems.append(f"{name}: empty; the first line is the header path,label[,split]")
        return []
    except csv.Error as exc:
        problems.append(f"{name} line 1: {exc}")
        return []
    missing = [c for c in ("path", "label") if c not in header]
    doubled = sorted({h for h in header if h and header.count(h) > 1})
    if missing or doubled:
        why = f"no column {' or '.join(missing)}" if missing else f"column {', '.join(doubled)} twice"
        problems.append(f"{name} line 1: the header {','.join(header)!r} has {why}; it must be path,label[,split]")
        return []
    at = {h: i for i, h in enumerate(header)}
    entries = []
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(f"{name} line {reader.line_num}: {exc}")
            break
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            problems.append(f"{name} line {reader.line_num}: {len(cells)} fields, the header has {len(header)}")
            continue
        split = cells[at["split"]].strip() if "split" in at else ""
        entries.append((reader.line_num, cells[at["path"]].strip(), cells[at["label"]].split(";"), split or None))
    return entries


def _jsonl_entries(text: str, name: str, problems: list[str]) -> list[tuple[int, str, list[str], str | None]]:
    entries = []
    for line, content in enumerate(text.splitlines(), start=1):
        if not content.strip():
            continue
        try:
            row = json.loads(content)
        except ValueError as exc:
            problems.append(f"{name} line {line}: not JSON ({exc})")
            continue
        if not isinstance(row, dict) or "path" not in row or "label" not in row:
            problems.append(f"{name} line {line}: needs an object with keys path and label (and split), got "
                            f"{content.strip()[:80]}")
            continue
        path, label, split = row["path"], row["label"], row.get("split")
        labels = [] if label is None else label if isinstance(label, list) else \
            label.split(";") if isinstance(label, str) else None
        if not isinstance(path, str) or labels is None or not all(isinstance(x, str) for x in labels) \
                or not (split is None or isinstance(split, str)):
            problems.append(f"{name} line {line}: path and split must be strings, label a string or a list of them")
            continue
        entries.append((line, path, labels, (split or "").strip() or None))
    return entries


def manifest_examples(path: str) -> Examples:
    """A multiclass dataset from a manifest: one label per row. Classes are the labels of the training
    rows (``train`` or no split), sorted; a val/test row with another label is an error."""
    rows = read_manifest(path)
    name = os.path.basename(path)
    problems = [f"{name} line {r.line}: {len(r.labels)} labels ({';'.join(r.labels) or 'empty'}); a multiclass "
                "dataset needs one label per row" for r in rows if len(r.labels) != 1]
    if problems:
        raise DatasetError([(("data", "root"), p) for p in problems[:_SHOWN_PROBLEMS]])
    names = sorted({r.labels[0] for r in rows if r.split in (None, "train")})
    to_index = {n: i for i, n in enumerate(names)}
    problems = [f"{name} line {r.line}: label {r.labels[0]!r} (split {r.split}) is on no training row "
                f"({_listed(names) or 'there are none'}); the training rows fix the classes" for r in rows
                if r.labels[0] not in to_index]
    if problems:
        raise DatasetError([(("data", "root"), p) for p in problems[:_SHOWN_PROBLEMS]])
    samples = [(r.path, to_index[r.labels[0]]) for r in rows]
    with_split = any(r.split is not None for r in rows)
    origins = {s: f"manifest {path}, split column" for s in SPLITS if any(r.split == s for r in rows)}
    if not with_split:
        origins["train"] = f"manifest {path}"
    elif any(r.split is None for r in rows):
        origins["train"] = f"manifest {path}, " + ("split column and rows without a split" if "train" in origins
                                                    else "rows without a split")
    return Examples(None, [t for _, t in samples], names, FileSamples(samples, names),
                    [r.split or "train" for r in rows] if with_split else None, origins,
                    base=os.path.dirname(os.path.abspath(path)))


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
        unknown = [f"{os.path.join(folder, c)}: class {c!r} is not one of the model's classes ({_listed(classes)}); "
                   "take the folder out, or evaluate a model trained with it" for c in found if c not in to_index]
        if unknown:
            raise DatasetError(unknown)
        samples = make_dataset(folder, {c: to_index[c] for c in found}, IMG_EXTENSIONS, allow_empty=True)
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
                    f"({_listed(classes)})" for r in rows if len(r.labels) != 1 or r.labels[0] not in to_index]
        if problems:
            raise DatasetError(problems[:_SHOWN_PROBLEMS])
        samples = [(r.path, to_index[r.labels[0]]) for r in rows]
        origin = f"manifest {path}, " + (f"{split} rows" if with_split else "all rows (no split column)")
        base = os.path.dirname(os.path.abspath(path))
    else:
        raise DatasetError(f"{path}: no such directory or manifest file (give a folder of <class>/<image>, one with "
                           "train/val/test folders, or a .csv/.jsonl manifest)")
    if not samples:
        raise DatasetError(f"{origin}: no images ({', '.join(IMG_EXTENSIONS)})")
    return Examples(None, [t for _, t in samples], list(classes), FileSamples(samples, list(classes)),
                    origins={split: origin}, base=base)


# --------------------------------------------------------------------------- bad images, fingerprint


def without_bad_images(examples: Examples) -> tuple[Examples, list[str]]:
    """``examples`` without the files that cannot be decoded, and those files (in dataset order)."""
    from recipec.checks import decodes

    source = examples.source
    keep = [decodes(path) is None for path, _ in source.samples]
    bad = [path for (path, _), ok in zip(source.samples, keep) if not ok]
    if not bad:
        return examples, []
    samples = [s for s, ok in zip(source.samples, keep) if ok]
    splits = None if examples.splits is None else [s for s, ok in zip(examples.splits, keep) if ok]
    return Examples(None, [t for _, t in samples], examples.names, FileSamples(samples, examples.names), splits,
                    examples.origins, examples.base), bad


def fingerprint(examples: Examples, labels: Sequence[Any], parts: dict[str, list[int]]) -> str:
    """sha256 of what each split holds: per example its label and its file (path relative to the
    dataset's directory, size) or, for data held in memory (digits, fake, torchvision arrays), its
    index. ``labels``: per example, a class index (or any JSON value: a multi-label run's list). A
    resume checks it. An empty ``test`` split is left out (so a run without one keeps the
    fingerprint it always had)."""
    import hashlib

    samples = getattr(examples.source, "samples", None)

    def item(i: int) -> list[Any]:
        if samples is None:
            return [i, labels[i]]
        path = samples[i][0]
        return [os.path.relpath(path, examples.base or "."), os.path.getsize(path), labels[i]]

    split = {name: [item(i) for i in idx] for name, idx in parts.items() if idx or name != "test"}
    return hashlib.sha256(json.dumps(split, separators=(",", ":")).encode()).hexdigest()


def count_per_class(indices: Sequence[int], labels: Sequence[int], names: Sequence[str]) -> dict[str, int]:
    counts = dict.fromkeys(names, 0)
    for i in indices:
        counts[names[labels[i]]] += 1
    return counts


def _listed(names: Sequence[str], most: int = 10) -> str:
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")
