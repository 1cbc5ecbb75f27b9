"""One split of a run's data (or of other data) for evaluation: :func:`build_split`, exactly as the
run split it, with the eval transforms, in dataset order."""

from __future__ import annotations

from collections.abc import Sequence

from recipec.errors import DatasetError
from recipec.data.config import DataConfig
from recipec.data.datasets import count_per_class
from recipec.data.examples import SPLITS
from recipec.data.folders import override_examples
from recipec.data.images import without_bad_images
from recipec.data.loaders import SplitData, eval_loader
from recipec.data.multilabel import build_multilabel_split
from recipec.data.speed import auto_workers
from recipec.data.splits import partition
from recipec.data.transforms import ImagePipeline, check_config

__all__ = ["build_split"]


def build_split(config: DataConfig, split: str, *, override: str | None = None, classes: Sequence[str],
                batch_size: int | None = None) -> SplitData:
    """One split of a run's data (or of other data), for evaluation: eval transforms, dataset order.

    Args:
        config: the run's data (its ``classes`` give way to ``classes``; augmentation is never applied).
        split: ``train``, ``val`` or ``test``. Without ``override`` these are exactly the run's
            examples (the same split function and seed: a random ``val`` is the run's val).
        override: other data instead of the run's: a directory of ``<class>/<image>``, or one with
            ``train``/``val``/``test`` folders (``split`` picks the folder), or a manifest file
            (its ``split`` rows, or every row when it has no split column).
        classes: the model's classes; label ``i`` is ``classes[i]``.
        batch_size: examples per batch (default: the run's ``batch_size``).

    Returns:
        The loader, the classes, the number of examples and ``info`` (``split``, ``source``,
        ``per_class``, ``skipped_images``; without ``override`` also ``left_out``: examples of
        classes the model lacks, which ``data.classes`` left out of the run).

    Raises:
        DatasetError: a split the data does not have (saying which exist), a class of ``override``
            the model lacks, a malformed manifest, a missing file.

    Example:
        >>> test = build_split(config, "test", classes=model_classes)
        >>> for images, labels in test.loader: ...
    """
    if config.reading.task == "multilabel":  # multi-hot targets from a manifest
        return build_multilabel_split(config, split, override=override, classes=classes, batch_size=batch_size)
    model_classes = [str(c) for c in classes]
    reading, loading = config.reading, config.loading
    if split not in SPLITS:
        raise DatasetError(f"split {split!r}: choose one of {', '.join(SPLITS)}")
    check_config(config.replace(augment=()))
    left_out: dict[str, int] = {}
    if override is None:
        parts = partition(reading, config.splitting, model_classes=model_classes)  # reading.classes unused
        if not (parts.has_val if split == "val" else split == "train" or not parts.origins["test"].startswith("none (")):
            have = "; ".join(f"{k}: {v}" for k, v in parts.origins.items() if not v.startswith("none"))
            why = parts.origins[split].removeprefix("none (").removesuffix(")")  # "data.test_split is false"
            fix = "set data.test_split: true" if "test_split" in why else \
                f"add one (root/{split}/<class>/<image>, or {split} rows in the manifest)"
            because = "" if "has no" in why else f": {why}"
            raise DatasetError(f"the run's data has no {split} split{because} (it has {have}); {fix}, "
                               f"or evaluate other data with --data DIR_OR_MANIFEST")
        examples, labels, bad, source = parts.examples, parts.labels, parts.bad, parts.origins[split]
        idx = parts.indices[SPLITS.index(split)]
        split_of = examples.splits or ["train"] * len(labels)
        for i, (t, s) in enumerate(zip(examples.targets, split_of)):
            if labels[i] < 0 and (s == split or (examples.splits is None and split != "test")):
                left_out[examples.names[t]] = left_out.get(examples.names[t], 0) + 1
    else:
        examples = override_examples(override, split, model_classes)
        bad = []
        if reading.on_bad_image == "skip":
            examples, bad = without_bad_images(examples)
        labels, idx, source = examples.targets, list(range(len(examples.targets))), examples.origins[split]
    pipeline = ImagePipeline(config.transforming)
    loader = eval_loader(pipeline.dataset(examples, idx, [labels[i] for i in idx], []),
                         batch_size or loading.batch_size,
                         auto_workers(loading.num_workers, reading.dataset, loading.device), loading.device == "cuda")
    info = {"split": split, "source": source, "n": len(idx), "per_class": count_per_class(idx, labels, model_classes),
            "skipped_images": bad, "left_out": left_out}
    return SplitData(loader, model_classes, len(idx), info)
