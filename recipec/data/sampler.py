"""The class-balanced training sampler (``data.sampler: balanced``).

Each epoch draws ``len(train)`` examples with replacement, example ``i`` with weight
``1 / n_{class(i)}``, so every class is equally likely at every draw (minority examples
repeat, majority ones are left out in turn). The draws come from the loader's own
generator, which :func:`recipec.data.loaders.set_epoch` reseeds from ``(seed, epoch)`` at the
start of every epoch, exactly as it does for the random permutation: the order is a pure
function of (seed, epoch), the same with any ``num_workers`` (the workers' seeds come from
that generator before the sampler draws, for 0 workers too), and a resumed run repeats it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["BalancedSampler", "Repeats", "balanced_sampler", "balanced_weights"]


def balanced_weights(labels: Sequence[int]) -> torch.Tensor:
    """Per-example weights ``1 / count(label)``, float64 (N,): every class sums to 1."""
    counts = Counter(labels)
    return torch.tensor([1.0 / counts[label] for label in labels], dtype=torch.float64)


class BalancedSampler(Sampler[int]):
    """``len(labels)`` class-balanced draws with replacement per epoch, from ``generator``.

    The k-th draw of example ``i`` in an epoch (k from 0) is yielded as ``i + k * n``: the
    training dataset is wrapped in :class:`Repeats`, which reads example ``j % n``, and the
    per-example seeding of random transforms (``EpochSeeded``: seed, epoch, index) then gives
    each repeat of a minority example its own augmentation instead of the same one again.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> drawn = [j % 4 for j in BalancedSampler([0, 0, 0, 1], g)]  # class 1 about half the time
    """

    def __init__(self, labels: Sequence[int], generator: torch.Generator) -> None:
        self.labels = list(labels)  # kept: a smoke run (recipec.pipeline.smoke) draws from a subset of them alike
        self.weights = balanced_weights(labels)
        self.n = len(labels)
        self.generator = generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        # the draws WeightedRandomSampler(weights, n, replacement=True, generator) makes
        drawn = torch.multinomial(self.weights, self.n, replacement=True, generator=self.generator).tolist()
        repeats: Counter[int] = Counter()
        for i in drawn:
            yield i + self.n * repeats[i]
            repeats[i] += 1


class Repeats(Dataset):
    """``dataset`` read at ``j % len(dataset)``: the indices :class:`BalancedSampler` yields."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, j: int) -> Any:
        return self.dataset[j % len(self.dataset)]


def balanced_sampler(labels: Sequence[int], generator: torch.Generator) -> BalancedSampler:
    """The :class:`BalancedSampler` of ``labels`` (wrap the dataset in :class:`Repeats`)."""
    return BalancedSampler(labels, generator)

