"""The frozen-prefix feature cache (``train.feature_cache: auto``).

While only the head trains, everything before it is frozen and, with the frozen groups in
eval mode (``freeze.batchnorm`` and ``freeze.dropout``: frozen) and no augmentation,
deterministic: its output for a training example cannot change from one epoch to the next.
It is computed once, in eval mode and under the run's autocast, and those
epochs train the head on the cached inputs, in exactly the batch order the data loader
would have used. The first epoch that unfreezes anything else goes back to full forward
passes (unfreezing is monotonic, so the cached epochs are a prefix of the run).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.models import GoogLeNet, Inception3

from recipec.train.freezing import adapter_parameters, set_train_mode
from recipec.train.modes import differs_in_training

__all__ = ["CacheConfig", "HeadCache", "cache_refusal", "head_cache", "head_only_epochs"]

_MAX_BYTES = 2 * 1024**3  # beyond this the cache would compete with the model for memory


class _Indices(Dataset[int]):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


@dataclass(frozen=True)
class CacheConfig:
    """What decides whether a run may use the cache (the compiler reads it from the recipe).

    Attributes:
        enabled: ``train.feature_cache`` is not ``off``.
        augment: the training augmentations (any refuses the cache).
        mix: MixUp or CutMix is on.
        batchnorm, dropout: the modes of the frozen groups (``freeze.batchnorm``, ``freeze.dropout``).
    """

    enabled: bool = True
    augment: tuple[Any, ...] = ()
    mix: bool = False
    batchnorm: str = "frozen"
    dropout: str = "frozen"


def cache_refusal(model: nn.Module, *, head_path: str, groups: Sequence[Any], augment: Sequence[Any],
                  batchnorm: str, distributed: bool, dropout: str = "frozen", mix: bool = False) -> str | None:
    """Why the cache cannot be used for this run, or None when it can.

    The cache is used only where it provably gives the same numbers: while only the head group
    (the last of ``groups``) trains, every module outside the head must be in eval mode (as
    ``freeze.batchnorm`` and ``freeze.dropout`` put frozen groups) or have code that computes the
    same in both modes (:func:`recipec.train.modes.depends_on_training` reads it). The cache fills
    in eval mode.
    """
    if augment:
        return "augmentations change the inputs every epoch"
    if mix:
        return "mixup/cutmix mix the examples of every batch"
    if distributed:
        return "not used with several processes"
    if adapter_parameters(model)[0]:  # the first adapted module trains: nothing from it on is fixed
        return "adapters train inside the backbone (adapters:), so its features change every step"
    head = model.get_submodule(head_path)
    head_params = {id(p) for p in head.parameters()}
    named = dict(model.named_parameters())
    group = groups[-1]
    head_group = group.name
    if {id(named[n]) for n in group.params} != head_params:
        return f"the group {head_group!r} is not exactly the head module {head_path!r}"
    inside = {id(m) for m in head.modules()}
    modes = {m: m.training for m in model.modules()}
    set_train_mode(model, groups, (head_group,), batchnorm=batchnorm, dropout=dropout)  # as the cached epochs run
    try:
        for name, module in model.named_modules():
            if id(module) in inside or not module.training or _switches_aux_only(module):
                continue
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                return "batchnorm: train lets frozen BatchNorm statistics change"
            if differs_in_training(module):
                why = " (freeze.dropout: train keeps it random while frozen)" if dropout == "train" else ""
                return f"{name or 'the model'} ({type(module).__name__}) computes differently in training mode{why}"
    finally:
        for module, training in modes.items():
            module.training = training
    return None


def _switches_aux_only(module: nn.Module) -> bool:
    # torchvision's GoogLeNet and Inception3 read `training` only to return auxiliary outputs, and
    # those count in the loss only while their group trains, never in a head-only (cached) epoch
    return isinstance(module, (GoogLeNet, Inception3))


class HeadCache:
    """Inputs of the head module for every training example, and batches of them in loader order."""

    def __init__(self, model: nn.Module, head_path: str, loader: DataLoader, epochs: Sequence[int]) -> None:
        self.model = model
        self.head = model.get_submodule(head_path)
        self.loader = loader
        self.epochs = frozenset(epochs)
        self.features: torch.Tensor | None = None   # (examples, *head input shape)
        self.labels: torch.Tensor | None = None     # (examples,)
        self.refused: str | None = None             # why fill gave up (then for good)

    @torch.no_grad()
    def fill(self, device: torch.device, amp: str = "none") -> bool:
        """Compute the cache (once), under the autocast the uncached forward uses (``amp``, as
        ``train.amp``); False (and :attr:`refused` says why, for good) when it would be too large to
        keep, or when the body's output for an example depends on the other examples of its batch.

        That last check runs the last examples again as one batch in reverse order and wants the
        same bits: most architectures compute each example alone, but some kernels do not (maxvit_t
        on CPU differs by ~3e-7), and the cached epochs mix examples into other batches than the fill.
        """
        if self.features is not None:
            return True
        if self.refused is not None:
            return False
        captured: list[torch.Tensor] = []
        # a copy: an inplace first layer of the head (ReLU(inplace=True)) would change the tensor kept
        hook = self.head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach().clone()))
        modes = {m: m.training for m in self.model.modules()}  # BN of frozen groups may be in eval already
        self.model.eval()  # the frozen prefix computes in eval mode while cached: same numbers
        labels = []
        try:
            # its own generator: a loader without one draws its seed from the global RNG, which
            # would shift every later dropout mask and augmentation
            ordered = DataLoader(self.loader.dataset, batch_size=self.loader.batch_size, shuffle=False,
                                 num_workers=self.loader.num_workers, generator=torch.Generator())
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
            for x, y in ordered:
                # the head then sees the same (e.g. bfloat16) inputs as in a full pass
                with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
                    self.model(x.to(device))
                labels.append(y)
                if sum(t.numel() * t.element_size() for t in captured) > _MAX_BYTES:
                    self.refused = f"the head inputs would take more than {_MAX_BYTES / 1024**3:g} GiB"
                    return False
            features = torch.cat(captured)
            probe = list(range(len(features) - 1, max(len(features) - (self.loader.batch_size or 1), 0) - 1, -1))
            for x, _ in DataLoader(Subset(self.loader.dataset, probe), batch_size=len(probe), shuffle=False,
                                   generator=torch.Generator()):
                with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
                    self.model(x.to(device))
            if not torch.equal(captured[-1], features[probe]):
                self.refused = "the body's output for an example depends on the rest of its batch (float rounding)"
                return False
        finally:
            hook.remove()
            for module, training in modes.items():
                module.training = training
        self.features = features
        self.labels = torch.cat(labels).to(device)
        return True

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(head inputs, labels) per batch, ordered as the training loader orders this epoch.

        An index loader with the same batch size, shuffling and generator draws exactly what
        the real loader draws, so the order matches without depending on torch internals.
        """
        assert self.features is not None and self.labels is not None
        # the loader's own sampler (a permutation, or data.sampler: balanced) over the same generator
        order = DataLoader(_Indices(len(self.features)), batch_size=self.loader.batch_size, sampler=self.loader.sampler,
                           generator=self.loader.generator, drop_last=self.loader.drop_last)
        for index in order:
            index = (index % len(self.features)).to(self.features.device)  # BalancedSampler: i + k * n
            yield self.features[index], self.labels[index]


def head_only_epochs(schedule: Any, head_group: str, epochs: int) -> list[int]:
    """The leading epochs (of ``epochs``) in which the head group alone trains: the ones a cache can serve."""
    leading = []
    for epoch in range(epochs):
        if tuple(schedule.trainable_at(epoch)) != (head_group,):
            break
        leading.append(epoch)
    return leading


def head_cache(model: nn.Module, groups: Sequence[Any], head_prefix: str, loader: DataLoader, epochs: Sequence[int],
               config: CacheConfig, *, distributed: bool = False) -> HeadCache | None:
    """The head-input cache a build (or lr-find) uses for ``epochs``, or None when the cache is off (``config``)
    or there is no such epoch. When the cache would not give the same weights, it serves no epoch and its
    ``refused`` says why (metrics.jsonl's ``feature_cache_refused``).

    Args:
        model: the model, its head at ``head_prefix`` (``"fc."``).
        groups: its layer groups, earliest first, the head's last.
        loader: the training loader whose batches the cache replays.
        epochs: the epochs it may serve (:func:`head_only_epochs`).
    """
    if not config.enabled or not epochs:
        return None
    head_path = _around_group(model, head_prefix.rstrip("."), groups[-1].params)
    refused = cache_refusal(model, head_path=head_path, groups=groups, augment=config.augment,
                            batchnorm=config.batchnorm, dropout=config.dropout, distributed=distributed,
                            mix=config.mix)
    cache = HeadCache(model, head_path, loader, [] if refused else list(epochs))
    cache.refused = refused
    return cache


def _around_group(model: nn.Module, path: str, params: Any) -> str:
    """The smallest module around the classifier at ``path`` holding exactly the head group's parameters:
    timm's head group keeps the classifier's norm (``head.norm`` + ``head.fc``: cache the input of ``head``)."""
    wanted, inner = set(params), path
    while path:
        if {f"{path}.{name}" for name, _ in model.get_submodule(path).named_parameters()} == wanted:
            return path
        path = path.rpartition(".")[0]
    return inner
