"""Smoke runs (``recipec build RECIPE --smoke``): the whole pipeline on a few batches, in seconds.

In the manner of Lightning's ``fast_dev_run``, but for a schedule: every *phase* of the
freezing schedule (every distinct set of trainable groups, each group at its own
discriminative lr) trains on a few batches and validates on a few, then the exports and
the card are written. The recipe is compressed to one epoch per phase — epoch ``i`` of
the smoke run is the first epoch of phase ``i`` — and that compressed recipe is what the
run directory's ``recipe.yaml`` records, so the directory says what actually ran.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader, Subset

from recipec.data.loaders import drops_single_last
from recipec.data.sampler import BalancedSampler, Repeats
from recipec.data.speed import EpochSeeded
from recipec.recipe.spec import GradualSpec, Recipe

__all__ = ["smoke_data", "smoke_recipe"]


def smoke_recipe(recipe: Recipe) -> Recipe:
    """``recipe`` with one epoch per phase of its freezing schedule.

    Phase starts are epoch 0, every ``freeze.unfreeze`` epoch and every ``freeze.gradual``
    epoch (a gradual epoch after every group is unfrozen is a phase that repeats the last
    one: harmless). Epoch-valued scheduler options are scaled by the same ratio, so the lr
    curve keeps its shape. When gradual epochs and explicit unfreeze epochs interleave the
    schedule cannot be compressed; the epochs are then kept and only batches are cut.
    """
    freeze, epochs = recipe.freeze, recipe.train.epochs
    gradual: list[int] = []
    if freeze.gradual is not None:
        gradual = list(range(freeze.gradual.start, epochs, freeze.gradual.every))
    starts = sorted({0, *freeze.unfreeze, *gradual})
    index = {epoch: i for i, epoch in enumerate(starts)}
    new_gradual = None
    if gradual:
        first = index[gradual[0]]
        if [index[e] for e in gradual] != list(range(first, len(starts))):
            return _with(recipe, train={"early_stopping": None})
        new_gradual = GradualSpec(every=1, start=first)
    ratio = len(starts) / epochs
    scheduler = recipe.optimizer.scheduler
    scaled: dict[str, Any] = {}
    if hasattr(scheduler, "warmup_epochs"):
        scaled["warmup_epochs"] = scheduler.warmup_epochs * ratio
    if hasattr(scheduler, "step_epochs"):
        scaled["step_epochs"] = max(1, round(scheduler.step_epochs * ratio))
    return _with(recipe, train={"epochs": len(starts), "early_stopping": None},
                 freeze={"unfreeze": {index[e]: list(g) for e, g in freeze.unfreeze.items()}, "gradual": new_gradual},
                 optimizer={"scheduler": scheduler.model_copy(update=scaled)})


def _with(recipe: Recipe, **sections: dict[str, Any]) -> Recipe:
    # model_copy, not a dump and a validation: the values are consistent by construction, and a
    # validator may look at which fields were written, which a round trip through a dump changes
    update = {name: getattr(recipe, name).model_copy(update=values) for name, values in sections.items()}
    return recipe.model_copy(update=update)


def smoke_data(data: Any, batches: int) -> Any:
    """``data`` with ``batches`` batches of training and of validation examples.

    The examples are spread evenly over each split (sorted by file or index, so every class
    is likely to appear). The training loader keeps the run's sampler: a permutation, or with
    ``data.sampler: balanced`` class-balanced draws over the kept examples (a
    :class:`~recipec.data.sampler.BalancedSampler` of their labels); either way the order is
    still a function of (seed, epoch), from the loader's own generator.
    """
    def cut(loader: DataLoader | None, shuffle: bool) -> DataLoader | None:
        if loader is None:
            return None
        dataset, sampler = loader.dataset, loader.sampler
        size = len(dataset)  # type: ignore[arg-type]
        want = min(size, batches * (loader.batch_size or 1))
        kept = [i * size // want for i in range(want)]  # evenly over the whole split, the last examples too
        order = None
        if shuffle and isinstance(sampler, BalancedSampler):  # data.sampler: balanced, as the real run
            order = BalancedSampler([sampler.labels[i] for i in kept], loader.generator)  # type: ignore[arg-type]
            seeded = isinstance(dataset, EpochSeeded)
            repeats = dataset.dataset if seeded else dataset  # type: ignore[attr-defined]
            assert isinstance(repeats, Repeats), type(repeats)  # build_data wraps a balanced split so
            subset: Any = Repeats(Subset(repeats.dataset, kept))
            subset = EpochSeeded(subset) if seeded else subset
        else:
            subset = Subset(dataset, kept)
        return DataLoader(subset, batch_size=loader.batch_size, shuffle=shuffle and order is None, sampler=order,
                          generator=loader.generator if shuffle else None, num_workers=loader.num_workers,
                          collate_fn=loader.collate_fn,
                          drop_last=shuffle and drops_single_last(want, loader.batch_size or 1))

    data.train = cut(data.train, True)
    data.val = cut(data.val, False)
    data.info = {**data.info, "smoke": {"batches": batches, "sampler": data.info.get("sampler", "random"), "sizes": {
        "train": len(data.train.dataset), "val": 0 if data.val is None else len(data.val.dataset)}}}
    return data
