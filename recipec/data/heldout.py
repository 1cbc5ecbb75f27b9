"""One split of a run's data (or of other data) for evaluation: :func:`build_split`, exactly as the
run split it, with the eval transforms, in dataset order; and the loader of every held-out split."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch.utils.data import DataLoader, Dataset

from recipec.errors import DatasetError
from recipec.data.datasets import SPLITS, count_per_class, override_examples, without_bad_images
from recipec.data.speed import auto_workers
from recipec.data.splits import partition
from recipec.data.transforms import _check_args, _Pipeline, _stats

__all__ = ["SplitData", "build_split"]


@dataclass
class SplitData:
    """What :func:`build_split` returns: ``n`` examples of one split in ``loader`` (eval transforms,
    dataset order), labelled by ``classes`` (the model's); ``info``: ``split``, ``source`` (where the
    examples came from), ``per_class`` counts, ``skipped_images``."""

    loader: DataLoader
    classes: list[str]
    n: int
    info: dict[str, Any]


def build_split(*, split: str, override: str | None = None, classes: Sequence[str], batch_size: int | None = None,
                **kwargs: Any) -> SplitData:
    """One split of a run's data (or of other data), for evaluation: eval transforms, dataset order.

    Args:
        split: ``train``, ``val`` or ``test``. Without ``override`` these are exactly the run's
            examples (the same split function and seed: a random ``val`` is the run's val).
        override: other data instead of the run's: a directory of ``<class>/<image>``, or one with
            ``train``/``val``/``test`` folders (``split`` picks the folder), or a manifest file
            (its ``split`` rows, or every row when it has no split column).
        classes: the model's classes; label ``i`` is ``classes[i]``.
        batch_size: examples per batch (default: the run's ``batch_size``).
        **kwargs: :func:`recipec.compiler.compile.data_kwargs` of the run's recipe (its ``classes`` and
            ``batch_size`` are replaced by the arguments above; augmentation is never applied).

    Returns:
        The loader, the classes, the number of examples and ``info`` (``split``, ``source``,
        ``per_class``, ``skipped_images``; without ``override`` also ``left_out``: examples of
        classes the model lacks, which ``data.classes`` left out of the run).

    Raises:
        DatasetError: a split the data does not have (saying which exist), a class of ``override``
            the model lacks, a malformed manifest, a missing file.

    Example:
        >>> kwargs = data_kwargs(recipe) | {"classes": model_classes}
        >>> test = build_split(split="test", **kwargs)
        >>> for images, labels in test.loader: ...
    """
    if kwargs.get("task") == "multilabel":  # multi-hot targets from a manifest
        from recipec.data.multilabel import build_multilabel_split

        return build_multilabel_split(split=split, override=override, classes=classes, batch_size=batch_size, **kwargs)
    model_classes = [str(c) for c in classes]
    get = kwargs.get
    image_size, in_channels = get("image_size", 224), get("in_channels", 3)
    resize_size, interpolation, crop_mode = get("resize_size"), get("interpolation", "bilinear"), get("crop_mode", "center")
    dataset, val_fraction, on_bad_image = get("dataset", "digits"), get("val_fraction", 0.2), get("on_bad_image", "error")
    if split not in SPLITS:
        raise DatasetError(f"split {split!r}: choose one of {', '.join(SPLITS)}")
    _check_args(dataset, get("normalize", "from_weights"), (), val_fraction, image_size, in_channels, resize_size,
                interpolation, crop_mode)
    left_out: dict[str, int] = {}
    if override is None:
        parts = partition(dataset, get("root"), None, val_fraction, get("per_class"), get("seed", 0),
                           get("num_classes"), on_bad_image, model_classes=model_classes,
                           test_split=get("test_split", True))
        if not (parts.has_val if split == "val" else split == "train" or not parts.origins["test"].startswith("none (")):
            have = "; ".join(f"{k}: {v}" for k, v in parts.origins.items() if not v.startswith("none"))
            fix = "set data.test_split: true" if "test_split" in parts.origins[split] else \
                f"add one (root/{split}/<class>/<image>, or {split} rows in the manifest)"
            raise DatasetError(f"the run's data has no {split} split ({parts.origins[split]}; it has {have}); {fix} "
                               f"or give the data to evaluate with --data DIR_OR_MANIFEST")
        examples, labels, bad, source = parts.examples, parts.labels, parts.bad, parts.origins[split]
        idx = parts.indices[SPLITS.index(split)]
        split_of = examples.splits or ["train"] * len(labels)
        for i, (t, s) in enumerate(zip(examples.targets, split_of)):
            if labels[i] < 0 and (s == split or (examples.splits is None and split != "test")):
                left_out[examples.names[t]] = left_out.get(examples.names[t], 0) + 1
    else:
        examples = override_examples(override, split, model_classes)
        bad = []
        if on_bad_image == "skip":
            examples, bad = without_bad_images(examples)
        labels, idx, source = examples.targets, list(range(len(examples.targets))), examples.origins[split]
    stats = _stats(get("normalize", "from_weights"), get("weights_normalization"), in_channels)
    pipeline = _Pipeline(image_size, resize_size, interpolation, crop_mode, in_channels, stats, get("crop_fill"))
    loader = _eval_loader(pipeline.dataset(examples, idx, [labels[i] for i in idx], []),
                          batch_size or get("batch_size", 32),
                          auto_workers(get("num_workers", 0), dataset, get("device", "cpu")), get("device") == "cuda")
    info = {"split": split, "source": source, "n": len(idx), "per_class": count_per_class(idx, labels, model_classes),
            "skipped_images": bad, "left_out": left_out}
    return SplitData(loader, model_classes, len(idx), info)


def _eval_loader(dataset: Dataset, batch_size: int, num_workers: int, pin: bool = False) -> DataLoader:
    """val, test and :func:`build_split`: dataset order, every example. Nothing random, so workers may persist."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, drop_last=False,
                      persistent_workers=num_workers > 0, pin_memory=pin, prefetch_factor=4 if num_workers else None)
