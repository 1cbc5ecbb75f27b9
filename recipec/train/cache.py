"""The frozen-prefix feature cache (``train.feature_cache: auto``).

While only the head trains, everything before it is frozen and, with BatchNorm kept in
eval mode, no dropout and no augmentation, deterministic: its output for a training
example cannot change from one epoch to the next. So it is computed once, and those
epochs train the head on the cached inputs, in exactly the batch order the data loader
would have used. The first epoch that unfreezes anything else goes back to full forward
passes (unfreezing is monotonic, so the cached epochs are a prefix of the run).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["HeadCache", "cache_refusal"]

_MAX_BYTES = 2 * 1024**3  # beyond this the cache would compete with the model for memory


class _Indices(Dataset[int]):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def cache_refusal(model: nn.Module, *, head_path: str, head_group: str, groups: Sequence[Any],
                  augment: Sequence[str], batchnorm: str, distributed: bool) -> str | None:
    """Why the cache cannot be used for this run, or None when it can."""
    if augment:
        return "augmentations change the inputs every epoch"
    if distributed:
        return "not used with several processes"
    head = model.get_submodule(head_path)
    head_params = {id(p) for p in head.parameters()}
    named = dict(model.named_parameters())
    group = next(g for g in groups if g.name == head_group)
    if {id(named[n]) for n in group.params} != head_params:
        return f"the group {head_group!r} is not exactly the head module {head_path!r}"
    inside = {id(m) for m in head.modules()}
    for name, module in model.named_modules():
        if id(module) in inside:
            continue
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return f"{name} is a dropout layer before the head (random in training)"
        if batchnorm == "train" and isinstance(module, nn.modules.batchnorm._BatchNorm):
            return "batchnorm: train lets frozen BatchNorm statistics change"
    return None


class HeadCache:
    """Inputs of the head module for every training example, and batches of them in loader order."""

    def __init__(self, model: nn.Module, head_path: str, loader: DataLoader, epochs: Sequence[int]) -> None:
        self.model = model
        self.head = model.get_submodule(head_path)
        self.loader = loader
        self.epochs = frozenset(epochs)
        self.features: torch.Tensor | None = None   # (examples, *head input shape)
        self.labels: torch.Tensor | None = None     # (examples,)

    @torch.no_grad()
    def fill(self, device: torch.device) -> bool:
        """Compute the cache (once); False when it would be too large to keep."""
        if self.features is not None:
            return True
        captured: list[torch.Tensor] = []
        hook = self.head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
        modes = {m: m.training for m in self.model.modules()}  # BN of frozen groups may be in eval already
        self.model.eval()  # the frozen prefix computes in eval mode while cached: same numbers
        labels = []
        try:
            # its own generator: a loader without one draws its seed from the global RNG, which
            # would shift every later dropout mask and augmentation
            ordered = DataLoader(self.loader.dataset, batch_size=self.loader.batch_size, shuffle=False,
                                 num_workers=self.loader.num_workers, generator=torch.Generator())
            for x, y in ordered:
                self.model(x.to(device))
                labels.append(y)
                if sum(t.numel() * t.element_size() for t in captured) > _MAX_BYTES:
                    return False
        finally:
            hook.remove()
            for module, training in modes.items():
                module.training = training
        self.features = torch.cat(captured)
        self.labels = torch.cat(labels).to(device)
        return True

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(head inputs, labels) per batch, ordered as the training loader orders this epoch.

        An index loader with the same batch size, shuffling and generator draws exactly what
        the real loader draws, so the order matches without depending on torch internals.
        """
        assert self.features is not None and self.labels is not None
        order = DataLoader(_Indices(len(self.features)), batch_size=self.loader.batch_size, shuffle=True,
                           generator=self.loader.generator)
        for index in order:
            index = index.to(self.features.device)
            yield self.features[index], self.labels[index]
