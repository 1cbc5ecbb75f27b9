"""The class-balanced training sampler (``data.sampler: balanced``).

Each epoch draws ``len(train)`` examples with replacement, example ``i`` with weight
``1 / n_{class(i)}``, so every class is equally likely at every draw (minority examples
repeat, majority ones are left out in turn). The draws come from the loader's own
generator, which :func:`recipec.train.data.set_epoch` reseeds from ``(seed, epoch)`` at the
start of every epoch, exactly as it does for the random permutation: the order is a pure
function of (seed, epoch), the same with any ``num_workers`` (the workers' seeds come from
that generator before the sampler draws, for 0 workers too), and a resumed run repeats it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import WeightedRandomSampler

__all__ = ["balanced_sampler", "balanced_weights", "check_sampler"]


def balanced_weights(labels: Sequence[int]) -> torch.Tensor:
    """Per-example weights ``1 / count(label)``, float64 (N,): every class sums to 1."""
    counts = Counter(labels)
    return torch.tensor([1.0 / counts[label] for label in labels], dtype=torch.float64)


def balanced_sampler(labels: Sequence[int], generator: torch.Generator) -> WeightedRandomSampler:
    """``len(labels)`` class-balanced draws with replacement per epoch, from ``generator``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> order = list(balanced_sampler([0, 0, 0, 1], g))  # class 1 is drawn about half the time
    """
    weights: Any = balanced_weights(labels)  # a tensor, which the sampler takes as it is (its stub says Sequence)
    return WeightedRandomSampler(weights, num_samples=len(labels), replacement=True,
                                 generator=generator)


def check_sampler(sampler: str, *, distributed: bool) -> None:
    """Refuse ``data.sampler: balanced`` with several processes: DistributedSampler would replace it.

    Raises:
        RecipeError: at ``data.sampler``.
    """
    if sampler == "balanced" and distributed:
        from recipec.errors import RecipeError

        raise RecipeError([(("data", "sampler"), "balanced is not supported with several processes (--nproc, "
                                                 "torchrun): each rank would shard a permutation instead; train "
                                                 "on one process, or use loss.class_weights: auto")])
