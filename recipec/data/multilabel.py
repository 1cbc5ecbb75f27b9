"""``task: multilabel`` data: multi-hot targets from a manifest (the metrics and loss: :mod:`recipec.train.multilabel`).

The manifest's ``label`` holds an image's labels separated by ``;`` (a JSON line may give a list),
an empty label means none. The classes are the sorted union of the training rows' labels (or
``data.classes``: then other labels are ignored); a val/test label outside them is an error.
Targets are multi-hot float vectors (C,), batched (N, C). Val is the manifest's ``val`` rows, else a
random ``data.val_fraction`` of the training rows (seeded, not stratified: an image has several classes).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from recipec.errors import DatasetError
from recipec.data.augment import build_augmentations
from recipec.data.config import DataConfig
from recipec.data.datasets import fingerprint
from recipec.data.examples import SHOWN_PROBLEMS, SPLITS, Examples, FileSamples, listed
from recipec.data.images import decodes
from recipec.data.loaders import LAST_BATCH_POLICY, Data, SplitData, eval_loader, train_loader
from recipec.data.manifest import ManifestRow, read_manifest
from recipec.data.speed import auto_workers
from recipec.data.splits import EPOCH_STRIDE
from recipec.data.transforms import ImagePipeline, check_config, preprocessing_info

__all__ = ["build_multilabel_data", "build_multilabel_split", "manifest_classes", "multi_hot"]


def manifest_classes(path: str, classes: Sequence[str] | None = None) -> list[str]:
    """The classes of a multi-label manifest: ``classes`` (checked) or the sorted union of the training rows' labels.

    Raises:
        DatasetError: as :func:`recipec.data.manifest.read_manifest`; a class of ``classes`` on no training row.
    """
    return _classes(read_manifest(path), classes, os.path.basename(path))


def _classes(rows: Sequence[ManifestRow], classes: Sequence[str] | None, name: str) -> list[str]:
    found = sorted({label for r in rows if r.split in (None, "train") for label in r.labels})
    if classes is None:
        if not found:
            raise DatasetError([(("root",), f"{name}: no training row has a label; label the images (labels "
                                            "separated by ';')")])
        return found
    problems = [(("classes", i), f"class {c!r} is on no training row of {name} ({listed(found)})")
                for i, c in enumerate(classes) if c not in found]
    problems += [(("classes", i), f"class {c!r} is listed twice") for i, c in enumerate(classes)
                 if list(classes).index(c) != i]
    if problems:
        raise DatasetError(problems)
    return list(classes)


def multi_hot(labels: Sequence[str], index: Mapping[str, int]) -> torch.Tensor:
    """(C,) float32: 1 for each of ``labels`` that ``index`` holds, else 0."""
    target = torch.zeros(len(index))
    for label in labels:
        if label in index:
            target[index[label]] = 1.0
    return target


def _split(rows: Sequence[ManifestRow], val_fraction: float, seed: int,
           test_split: bool = True) -> tuple[list[int], list[int], list[int], bool]:
    """(train, val, test indices, has_val): the manifest's split column, else a seeded random share for val;
    no test indices with ``test_split`` False (``data.test_split: false``)."""
    split_of = [r.split or "train" for r in rows]
    test = [i for i, s in enumerate(split_of) if s == "test" and test_split]
    if "val" in split_of:
        return ([i for i, s in enumerate(split_of) if s == "train"], [i for i, s in enumerate(split_of) if s == "val"],
                test, True)
    pool = [i for i, s in enumerate(split_of) if s == "train"]
    order = [pool[j] for j in torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed * EPOCH_STRIDE))]
    n_val = int(len(pool) * val_fraction + 0.5)
    if val_fraction > 0 and len(pool) >= 2:
        n_val = min(max(n_val, 1), len(pool) - 1)
    return sorted(order[n_val:]), sorted(order[:n_val]), test, val_fraction > 0


def _rows(path: str, on_bad_image: str, at: tuple[str | int, ...] = ("root",)) -> tuple[list[ManifestRow], list[str]]:
    rows = read_manifest(path, at=at)
    if on_bad_image != "skip":
        return rows, []
    bad = [r.path for r in rows if decodes(r.path) is not None]
    return [r for r in rows if r.path not in set(bad)], bad


def _examples(rows: Sequence[ManifestRow], names: Sequence[str], path: str) -> Examples:
    # the class index of a sample is unused: its multi-hot target travels beside it
    source = FileSamples([(r.path, 0) for r in rows], list(names))
    return Examples(None, [0] * len(rows), list(names), source, None, {}, base=os.path.dirname(os.path.abspath(path)))


def _positives(idx: Sequence[int], targets: Sequence[torch.Tensor], names: Sequence[str]) -> dict[str, int]:
    total = torch.stack([targets[i] for i in idx]).sum(0) if idx else torch.zeros(len(names))
    return {name: int(total[c]) for c, name in enumerate(names)}


def build_multilabel_data(config: DataConfig) -> Data:
    """:func:`recipec.data.build.build_data` for ``task: multilabel``: the same transforms, loaders and
    epoch seeding, with multi-hot targets (N, C) from a manifest. ``info`` counts, per class, the
    images that have it (``train_per_class`` ...), and the mean labels per image (``labels_per_image``).

    Raises:
        DatasetError: no manifest, a malformed one, ``per_class`` (a cap per class does not apply
            when an image has several), a val/test label outside the classes.
    """
    reading, splitting, p, loading = config.reading, config.splitting, config.transforming, config.loading
    root, classes, per_class = reading.root, reading.classes, splitting.per_class
    val_fraction, seed, test_split = splitting.val_fraction, splitting.seed, splitting.test_split
    if not root:
        raise DatasetError([(("root",), "task: multilabel needs root: the manifest file (.csv or .jsonl)")])
    if per_class is not None:
        raise DatasetError([(("per_class",), f"{per_class}: a cap per class does not apply to task: multilabel "
                                             "(an image has several classes); remove it")])
    check_config(config.replace(dataset="manifest"))
    rows, bad = _rows(root, reading.on_bad_image)
    name = os.path.basename(root)
    names = _classes(rows, classes, name)
    index = {n: i for i, n in enumerate(names)}
    if classes is None:
        unknown = [f"{name} line {r.line}: label {label!r} (split {r.split}) is on no training row ({listed(names)}); "
                   "the training rows fix the classes" for r in rows if r.split in ("val", "test")
                   for label in r.labels if label not in index]
        if unknown:
            raise DatasetError([(("root",), problem) for problem in unknown[:SHOWN_PROBLEMS]])
    targets = [multi_hot(r.labels, index) for r in rows]
    train_idx, val_idx, test_idx, has_val = _split(rows, val_fraction, seed, test_split)
    examples = _examples(rows, names, root)
    augmentations = build_augmentations(loading.augment, p.image_size, p.in_channels,
                                        p.interpolation if p.resize_size else "bilinear")
    augs, after = augmentations.before, augmentations.after
    pipeline = ImagePipeline(p)
    stats = pipeline.stats
    workers = auto_workers(loading.num_workers, "manifest", loading.device)
    pin = loading.device == "cuda"
    generator = torch.Generator().manual_seed(seed * EPOCH_STRIDE if loading.epoch_seed else seed)
    train_set = pipeline.dataset(examples, train_idx, [targets[i] for i in train_idx], augs, after)
    train = train_loader(train_set, len(train_idx), generator, loading=loading, workers=workers,
                         seeded=bool(augs or after))

    def held_out(idx: list[int]) -> Any:
        return eval_loader(pipeline.dataset(examples, idx, [targets[i] for i in idx], []), loading.batch_size,
                           workers, pin)

    val = held_out(val_idx) if has_val else None
    test = held_out(test_idx) if test_idx else None
    with_split = any(r.split is not None for r in rows)
    origins = {"train": f"manifest {root}" + (", split column" if with_split else ""),
               "val": f"manifest {root}, split column" if any(r.split == "val" for r in rows) else
               f"random {100 * val_fraction:g}% of the training rows (seed {seed})" if val_fraction > 0 else
               "none (data.val_fraction is 0)",
               "test": f"manifest {root}, split column" if test_idx else "none (data.test_split is false)"
               if not test_split and any(r.split == "test" for r in rows) else "none (the data has no test split)"}
    label_lists = [sorted(index[label] for label in r.labels if label in index) for r in rows]
    info = {
        "dataset": "manifest", "task": "multilabel", "root": root, "classes": names,
        "sizes": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)}, "splits": origins,
        "train_per_class": _positives(train_idx, targets, names), "val_per_class": _positives(val_idx, targets, names),
        "test_per_class": _positives(test_idx, targets, names),
        "per_class_counts": "images that have the class (task: multilabel)",
        "labels_per_image": sum(len(label_lists[i]) for i in train_idx) / max(len(train_idx), 1),
        **preprocessing_info(p, loading.augment, loading.sampler, pipeline, augmentations),
        "val_fraction": val_fraction, "per_class": None, "seed": seed,
        "fingerprint": fingerprint(examples, label_lists, {"train": train_idx, "val": val_idx, "test": test_idx}),
        "on_bad_image": reading.on_bad_image, "skipped_images": bad, "num_workers": workers,
        "batches": {"batch_size": loading.batch_size, "per_epoch": len(train),
                    "dropped_per_epoch": 1 if train.drop_last else 0, "last_batch": LAST_BATCH_POLICY},
    }
    return Data(train, val, names, stats, info, seed=seed, epoch_seed=loading.epoch_seed, test=test, task="multilabel",
                threshold=reading.threshold)


def build_multilabel_split(config: DataConfig, split: str, *, override: str | None, classes: Sequence[str],
                           batch_size: int | None) -> SplitData:
    """:func:`recipec.data.heldout.build_split` for ``task: multilabel``: one split of the run's manifest
    (exactly as the run split it), or of another manifest (``override``: its ``split`` rows, or all rows
    without a split column), labelled multi-hot by the model's ``classes``.

    Raises:
        DatasetError: no such split, a label the model lacks, no rows.
    """
    splitting, p, loading = config.splitting, config.transforming, config.loading
    model_classes = [str(c) for c in classes]
    index = {n: i for i, n in enumerate(model_classes)}
    if split not in SPLITS:
        raise DatasetError(f"split {split!r}: choose one of {', '.join(SPLITS)}")
    path = override if override is not None else config.reading.root
    if not path or os.path.isdir(path) or not os.path.exists(path):
        raise DatasetError(f"{path}: a multi-label model is evaluated on a manifest file (.csv or .jsonl, labels "
                           "separated by ';'); give one with --data")
    rows, bad = _rows(path, config.reading.on_bad_image, at=())
    name = os.path.basename(path)
    if override is None:
        train_idx, val_idx, test_idx, has_val = _split(rows, splitting.val_fraction, splitting.seed,
                                                       splitting.test_split)
        if (split == "val" and not has_val) or (split == "test" and not test_idx):
            raise DatasetError(f"the run's data has no {split} split ({path}); add {split} rows to the manifest or "
                               "give the data to evaluate with --data MANIFEST")
        idx = {"train": train_idx, "val": val_idx, "test": test_idx}[split]
        source = f"manifest {path}, {split} rows" + ("" if any(rows[i].split for i in idx) else " (random, as the run)")
    else:
        with_split = any(r.split is not None for r in rows)
        idx = [i for i, r in enumerate(rows) if not with_split or (r.split or "train") == split]
        if not idx:
            raise DatasetError(f"{path}: no rows of split {split}; choose a split its rows have")
        source = f"manifest {path}, " + (f"{split} rows" if with_split else "all rows (no split column)")
    unknown = [f"{name} line {rows[i].line}: label {label!r} is not one of the model's classes "
               f"({listed(model_classes)})" for i in idx for label in rows[i].labels if label not in index]
    if unknown:
        raise DatasetError(unknown[:SHOWN_PROBLEMS])
    targets = [multi_hot(r.labels, index) for r in rows]
    pipeline = ImagePipeline(p)
    loader = eval_loader(pipeline.dataset(_examples(rows, model_classes, path), idx, [targets[i] for i in idx], []),
                         batch_size or loading.batch_size,
                         auto_workers(loading.num_workers, "manifest", loading.device), loading.device == "cuda")
    info = {"split": split, "source": source, "n": len(idx), "per_class": _positives(idx, targets, model_classes),
            "skipped_images": bad, "left_out": {}}
    return SplitData(loader, model_classes, len(idx), info)
