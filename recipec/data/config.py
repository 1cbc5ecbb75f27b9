"""What :func:`recipec.data.build.build_data` builds, as one typed value: :class:`DataConfig`.

Four groups, in the order the data goes through them: what to read (:class:`Reading`), how to
split it (:class:`Splitting`), how every image becomes a tensor (:class:`Transforming`) and how
the loaders serve it (:class:`Loading`). Field names are unique across the groups, so a flat
keyword spelling (:meth:`DataConfig.of`, :meth:`DataConfig.replace`) reaches each one, and the data
layer's errors name them (``("root",)``, ``("classes", 1)``, ``("num_classes",)``): the compiler,
which made the config from a recipe, relabels them into recipe paths
(:mod:`recipec.compiler.data_config`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

__all__ = ["DataConfig", "Loading", "Reading", "Splitting", "Stats", "Transforming"]

Stats = tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std) per channel


@dataclass(frozen=True)
class Reading:
    """What to read.

    ``dataset``: one of :data:`recipec.recipe.catalog.DATASETS`; ``root``: its directory or
    manifest file (absolute); ``classes``: subset and order of classes (label ``i`` is
    ``classes[i]``); ``num_classes``: the model's output count (``fake`` needs it, else it is
    checked against the classes); ``on_bad_image``: ``error`` or ``skip`` (undecodable files are
    left out before the split); ``task``: ``multiclass`` or ``multilabel`` (multi-hot targets from
    a manifest, a class predicted at sigmoid >= ``threshold``).
    """

    dataset: str = "digits"
    root: str | None = None
    classes: Sequence[str] | None = None
    num_classes: int | None = None
    on_bad_image: str = "error"
    task: str = "multiclass"
    threshold: float = 0.5


@dataclass(frozen=True)
class Splitting:
    """How to split: ``val_fraction`` of each training class held out (seeded by ``seed``),
    at most ``per_class`` training examples per class, the data's own test split kept when
    ``test_split``."""

    val_fraction: float = 0.2
    per_class: int | None = None
    test_split: bool = True
    seed: int = 0


@dataclass(frozen=True)
class Transforming:
    """How every image becomes a (C, H, W) float tensor, train and eval alike.

    ``resize_size`` None: squashed to ``image_size`` squared (bilinear); a number: the shorter
    side to it with ``interpolation``, then the centre ``image_size`` square by ``crop_mode``
    (``crop_fill``: the RGB colour ``border`` pads with). ``normalize``: ``from_weights``
    (``weights_normalization``, or none without one), ``imagenet`` or ``none``.
    """

    image_size: int = 224
    in_channels: int = 3
    resize_size: int | None = None
    interpolation: str = "bilinear"
    crop_mode: str = "center"
    crop_fill: Sequence[int] | None = None
    normalize: str = "from_weights"
    weights_normalization: Stats | None = None


@dataclass(frozen=True)
class Loading:
    """How the loaders serve the examples: training ``augment`` items (in order), the ``sampler``
    (``random`` or ``balanced``), ``batch_size``, ``num_workers`` (a number or ``auto``), the
    ``device`` type the batches go to (``cuda``: pinned memory), and ``epoch_seed`` (reseed the
    training order every epoch from (seed, epoch))."""

    augment: Sequence[Any] = ()
    sampler: str = "random"
    batch_size: int = 32
    num_workers: int | str = 0
    device: str = "cpu"
    epoch_seed: bool = True


@dataclass(frozen=True)
class DataConfig:
    """Everything the data layer needs to build a run's data; made from a recipe by the compiler.

    Example:
        >>> config = DataConfig.of(dataset="digits", image_size=32, normalize="imagenet")
        >>> config.transforming.image_size, config.replace(batch_size=8).loading.batch_size
        (32, 8)
    """

    reading: Reading = field(default_factory=Reading)
    splitting: Splitting = field(default_factory=Splitting)
    transforming: Transforming = field(default_factory=Transforming)
    loading: Loading = field(default_factory=Loading)

    @classmethod
    def of(cls, **options: Any) -> DataConfig:
        """The defaults with ``options`` (any field of any group, by its name)."""
        return cls().replace(**options)

    def replace(self, **options: Any) -> DataConfig:
        """This config with ``options`` (fields of any group, by name) replaced.

        Raises:
            TypeError: a name that is no field of any group.
        """
        changed = {}
        for group in fields(self):
            part = getattr(self, group.name)
            mine = {f.name for f in fields(part)} & options.keys()
            changed[group.name] = replace(part, **{name: options[name] for name in mine})
        unknown = options.keys() - {f.name for group in changed.values() for f in fields(group)}
        if unknown:
            raise TypeError(f"unknown data option(s): {', '.join(sorted(unknown))}")
        return DataConfig(**changed)

    def options(self) -> dict[str, Any]:
        """Every field of every group by name: the flat spelling :meth:`of` takes."""
        return {name: value for group in fields(self) for name, value in asdict(getattr(self, group.name)).items()}
