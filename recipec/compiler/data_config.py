"""The recipe's data crosses here, once: recipe -> :class:`recipec.data.config.DataConfig`.

:func:`data_config` is the one place that reads ``recipe.data`` (with ``seed``, ``task``,
``multilabel.threshold``, ``model.in_channels``, ``model.head.num_classes`` and ``device``) for the
data layer, the normalisation and resize rule resolved against the weights the model ends up with.
Below, the data layer names its own fields in errors (``("root",)``, ``("classes", 1)``,
``("num_classes",)``); :func:`build_data` and :func:`build_split` relabel them with
:data:`DATA_FIELDS`, so a user reads ``data.root: ...`` and ``model.head.num_classes: ...``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from recipec.errors import RecipeError, RecipePath, relabeled
from recipec.compiler.compile import resolve_normalization, resolve_preprocessing
from recipec.data import augment, build, heldout
from recipec.data.config import DataConfig, Loading, Reading, Splitting, Transforming
from recipec.data.loaders import Data, SplitData
from recipec.recipe.spec import Recipe

__all__ = ["DATA_FIELDS", "build_data", "build_split", "check_sampler", "data_config", "data_kwargs", "data_plan"]

# a DataConfig field -> the recipe path a problem with it is reported at
DATA_FIELDS: dict[str, RecipePath] = {
    "dataset": ("data", "dataset"), "root": ("data", "root"), "classes": ("data", "classes"),
    "num_classes": ("model", "head", "num_classes"), "on_bad_image": ("data", "on_bad_image"), "task": ("task",),
    "threshold": ("multilabel", "threshold"),
    "val_fraction": ("data", "val_fraction"), "per_class": ("data", "per_class"), "test_split": ("data", "test_split"),
    "seed": ("seed",),
    "image_size": ("data", "image_size"), "in_channels": ("model", "in_channels"), "resize_size": ("data", "resize"),
    "interpolation": ("data", "resize"), "crop_mode": ("data", "resize"), "crop_fill": ("data", "resize"),
    "normalize": ("data", "normalize"), "weights_normalization": ("data", "normalize"),
    "augment": ("data", "augment"), "sampler": ("data", "sampler"), "batch_size": ("data", "batch_size"),
    "num_workers": ("data", "num_workers"), "device": ("device",),
}


def data_config(recipe: Recipe, **changes: Any) -> DataConfig:
    """The :class:`DataConfig` of ``recipe``, with ``changes`` (fields by name, e.g. ``device="cuda"``).

    ``normalize: from_weights`` follows the weights the model ends up with (a recipec source's recorded
    normalisation first); ``image_size`` and the resize are ``data.image_size`` and ``data.resize``
    against the weights' preprocessing (:func:`recipec.compiler.compile.resolve_preprocessing`).

    Raises:
        DatasetError: ``data.image_size: from_weights`` without weights that define an input size.

    Example:
        >>> data = build_data(data_config(recipe, device="cuda"))
    """
    d = recipe.data
    normalization, _ = resolve_normalization(recipe)
    rule = resolve_preprocessing(recipe)
    shorter = rule["rule"] == "shorter_side"
    config = DataConfig(
        Reading(dataset=d.dataset, root=d.root, classes=d.classes,
                num_classes=recipe.model.head.num_classes if recipe.model.head else None,
                on_bad_image=d.on_bad_image, task=recipe.task, threshold=recipe.multilabel.threshold),
        Splitting(val_fraction=d.val_fraction, per_class=d.per_class, test_split=d.test_split, seed=recipe.seed),
        Transforming(image_size=rule["image_size"], in_channels=recipe.model.in_channels,
                      resize_size=rule["resize_size"] if shorter else None, interpolation=rule["interpolation"],
                      crop_mode=rule["crop_mode"] or "center", crop_fill=rule.get("fill"), normalize=d.normalize,
                      weights_normalization=normalization),
        # the loaders' device type: pinned memory and num_workers: auto depend on it (build passes --device's)
        Loading(augment=[a if isinstance(a, str) else a.model_dump(mode="json") for a in d.augment],
                sampler=d.sampler, batch_size=d.batch_size, num_workers=d.num_workers,
                device=("cuda" if torch.cuda.is_available() else "cpu") if recipe.device == "auto"
                else recipe.device.split(":")[0]))
    return config.replace(**changes)


def data_kwargs(recipe: Recipe) -> dict[str, Any]:
    """:func:`data_config` of ``recipe`` spelled flat, every field by name: what :func:`build_data` takes as keywords."""
    return data_config(recipe).options()


def build_data(config: DataConfig | None = None, /, **options: Any) -> Data:
    """:func:`recipec.data.build.build_data` with its problems located in the recipe (:data:`DATA_FIELDS`).

    Args:
        config: the data to build (:func:`data_config`); None: the defaults.
        **options: fields of the config by name (:meth:`DataConfig.replace`), e.g. ``dataset="digits"``.

    Raises:
        DatasetError: as :func:`recipec.data.build.build_data`, at recipe paths (``data.root``...).

    Example:
        >>> data = build_data(dataset="digits", image_size=32, normalize="imagenet")
    """
    with relabeled(DATA_FIELDS):
        return build.build_data((config or DataConfig()).replace(**options))


def build_split(config: DataConfig | None = None, /, *, split: str, override: str | None = None,
                classes: Sequence[str], batch_size: int | None = None, **options: Any) -> SplitData:
    """:func:`recipec.data.heldout.build_split` with its problems located in the recipe (:data:`DATA_FIELDS`).

    ``options``: fields of the config by name, as :func:`build_data` takes them.

    Example:
        >>> test = build_split(data_config(recipe), split="test", classes=model_classes)
    """
    with relabeled(DATA_FIELDS):
        return heldout.build_split((config or DataConfig()).replace(**options), split, override=override,
                                   classes=classes, batch_size=batch_size)


def check_sampler(sampler: str, *, distributed: bool) -> None:
    """Refuse ``data.sampler: balanced`` with several processes: DistributedSampler would replace it.

    Raises:
        RecipeError: at ``data.sampler``.
    """
    if sampler == "balanced" and distributed:
        raise RecipeError([(("data", "sampler"), "balanced is not supported with several processes (--nproc, "
                                                 "torchrun): each rank would shard a permutation instead; train "
                                                 "on one process, or use loss.class_weights: auto")])


def data_plan(recipe: Recipe, data: Data) -> dict[str, Any]:
    """plan.json's ``data_transforms`` (train and eval, in order), ``data_mix`` (``data.mixup``,
    ``data.cutmix``) and ``data_sampler`` (:func:`recipec.data.augment.augment_plan`)."""
    d = recipe.data
    return augment.augment_plan(data, d.mixup, d.cutmix, d.sampler)
