"""Training augmentations by name (``data.augment``), and MixUp/CutMix of whole batches (``data.mixup``, ``data.cutmix``).

Every image reaches the augmentations as a float tensor (C, H, W) in [0, 1], already resized
(and centre-cropped by the weights' rule). The training pipeline is then

    <data.augment items in the order given, random_erasing left out>  ->  Normalize  ->  random_erasing

RandAugment, TrivialAugmentWide, AugMix and AutoAugment (torchvision.transforms.v2) work on
float images of 1 or 3 channels; RandomErasing comes after normalisation as in timm's
``create_transform`` (its ``value: 0`` is then the mean). Validation sees resize and
normalisation only. Every transform draws from torch's default RNG, as the data pipeline seeds
it (:mod:`recipec.data.loaders`), so a resumed run repeats the same augmentations. MixUp and
CutMix act on batches in the fit loop (:class:`BatchMix`), drawing from the global RNG of the
training process, which the training state saves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torchvision.transforms import v2

from recipec.errors import DatasetError

__all__ = ["AUGMENTS", "SAMPLERS", "Augmentations", "BatchMix", "augment_plan", "augment_problems", "batch_mix",
           "build_augmentations", "describe", "describe_augment"]

AUGMENTS = ("hflip", "vflip", "random_crop", "random_resized_crop", "color_jitter", "rotate",
            "randaugment", "trivialaugment", "augmix", "autoaugment", "random_erasing")
# defined on 1 and 3 channels only: their colour operations need a grey level (and a hue)
_COLOUR = ("color_jitter", "randaugment", "trivialaugment", "augmix", "autoaugment")
_AFTER_NORMALIZE = ("random_erasing",)


@dataclass
class Augmentations:
    """The training-only transforms: ``before`` normalisation and ``after`` it, and the items skipped."""

    before: list[Any] = field(default_factory=list)
    after: list[Any] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _item(entry: Any) -> tuple[str, dict[str, Any]]:
    """(name, options) of an ``augment`` item: a name, a mapping with ``name``, or a recipe spec."""
    if isinstance(entry, str):
        return entry, {}
    if hasattr(entry, "model_dump"):
        entry = entry.model_dump()
    if isinstance(entry, dict):
        options = {k: v for k, v in entry.items() if k != "name"}
        return str(entry.get("name")), options
    return str(entry), {}


def describe_augment(entry: Any) -> str:
    """An item as one line: ``hflip``, ``randaugment(num_ops=3, magnitude=9, num_magnitude_bins=31)``."""
    name, options = _item(entry)
    if not options:
        return name
    return f"{name}({', '.join(f'{k}={_short(v)}' for k, v in options.items())})"


def build_augmentations(augment: Sequence[Any], size: int, channels: int,
                        interpolation: str = "bilinear") -> Augmentations:
    """The transforms of ``data.augment`` for images of ``size`` squared with ``channels`` channels.

    Args:
        augment: names or ``{name, options}`` mappings (or the recipe's item specs), in order.
        size: the image side after resizing (random_crop and random_resized_crop keep it).
        channels: the model's input channels.
        interpolation: random_resized_crop resamples as the run's resize does.

    Returns:
        ``before`` and ``after`` normalisation; ``skipped``: color_jitter on images of neither 1
        nor 3 channels (as before; the others that need colour are refused).

    Raises:
        DatasetError: an unknown name or option, or a colour policy on images of neither 1 nor 3 channels,
            located at ``("augment", i)``.
    """
    out = Augmentations()
    problems = augment_problems(augment, channels)
    for i, entry in enumerate(augment):
        name, options = _item(entry)
        if name not in AUGMENTS or (name in _COLOUR and channels not in (1, 3)):
            if name == "color_jitter":
                out.skipped.append(describe_augment(entry))
            continue
        try:
            transform = _make(name, options, size, interpolation)
        except (TypeError, ValueError) as exc:  # an option torchvision refuses (the recipe spec bounds them first)
            problems.append((("augment", i), f"{describe_augment(entry)}: {exc}"))
            continue
        (out.after if name in _AFTER_NORMALIZE else out.before).append(transform)
    if problems:
        raise DatasetError(problems)
    return out


def augment_problems(augment: Sequence[Any], channels: int) -> list[Any]:
    """Problems of ``augment`` items, at ``("augment", i)``: unknown names, colour policies on neither 1 nor 3 channels."""
    problems: list[Any] = []
    for i, entry in enumerate(augment):
        name, _ = _item(entry)
        if name not in AUGMENTS:
            problems.append((("augment", i), f"unknown augmentation {name!r}; choose from {', '.join(AUGMENTS)}"))
        elif name in _COLOUR and name != "color_jitter" and channels not in (1, 3):
            problems.append((("augment", i), f"{name} works on images of 1 or 3 channels, and "
                                             f"model.in_channels is {channels}; remove it"))
    return problems


def _make(name: str, o: dict[str, Any], size: int, interpolation: str) -> Any:
    if name in ("hflip", "vflip"):
        flip = v2.RandomHorizontalFlip if name == "hflip" else v2.RandomVerticalFlip
        return flip(p=o.get("p", 0.5))
    if name == "random_crop":
        padding = o.get("padding")
        return v2.RandomCrop(size, padding=max(1, round(4 * size / 32)) if padding is None else padding)
    if name == "random_resized_crop":
        return v2.RandomResizedCrop(size, scale=tuple(o.get("scale", (0.6, 1.0))), ratio=tuple(o.get("ratio", (3 / 4, 4 / 3))),
                                    antialias=True, interpolation=v2.InterpolationMode(interpolation))
    if name == "color_jitter":
        return v2.ColorJitter(brightness=o.get("brightness", 0.2), contrast=o.get("contrast", 0.2),
                              saturation=o.get("saturation") or None, hue=o.get("hue") or None)
    if name == "rotate":
        return v2.RandomRotation(o.get("degrees", 15), interpolation=v2.InterpolationMode.BILINEAR)
    if name == "randaugment":
        return v2.RandAugment(num_ops=o.get("num_ops", 2), magnitude=o.get("magnitude", 9),
                              num_magnitude_bins=o.get("num_magnitude_bins", 31))
    if name == "trivialaugment":
        return v2.TrivialAugmentWide(num_magnitude_bins=o.get("num_magnitude_bins", 31))
    if name == "augmix":
        return v2.AugMix(severity=o.get("severity", 3), mixture_width=o.get("mixture_width", 3),
                         chain_depth=o.get("chain_depth", -1), alpha=o.get("alpha", 1.0), all_ops=o.get("all_ops", True))
    if name == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy(o.get("policy", "imagenet")))
    # random_erasing; "random": per-pixel standard normal noise (after normalisation: noise around the mean)
    value = o.get("value", 0.0)
    return v2.RandomErasing(p=o.get("p", 0.5), scale=tuple(o.get("scale", (0.02, 0.33))),
                            ratio=tuple(o.get("ratio", (0.3, 3.3))), value="random" if value == "random" else float(value))


# --------------------------------------------------------------------------- the plan's listing


def describe(transform: Any) -> list[str]:
    """A transform pipeline as short lines, one per step: ``Resize(36, bicubic)``, ``CenterCrop(32)``,
    ``RandAugment(num_ops=2, magnitude=9)``, ``Normalize(mean=[0.485, ...], std=[...])``."""
    if transform is None:
        return []
    if isinstance(transform, v2.Compose):
        return [line for t in transform.transforms for line in describe(t)]
    if isinstance(transform, (list, tuple)):
        return [line for t in transform for line in describe(t)]
    return [_one(transform)]


def _one(t: Any) -> str:
    kind = type(t).__name__
    mode = lambda m: getattr(m, "value", m)  # noqa: E731  InterpolationMode.BICUBIC -> bicubic
    if isinstance(t, v2.Resize):
        size = list(t.size) if isinstance(t.size, (list, tuple)) else [t.size]
        shown = size[0] if len(size) == 1 else "x".join(map(str, size))  # 256: the shorter side; 32x32: both
        return f"Resize({shown}, {mode(t.interpolation)})"
    if isinstance(t, (v2.CenterCrop, v2.RandomCrop)):
        pad = f", padding={t.padding[0]}" if isinstance(t, v2.RandomCrop) and t.padding else ""
        return f"{kind}({_side(t.size)}{pad})"
    if isinstance(t, v2.RandomResizedCrop):
        return f"RandomResizedCrop({_side(t.size)}, scale={_short(t.scale)}, ratio={_short(t.ratio)}, {mode(t.interpolation)})"
    if isinstance(t, (v2.RandomHorizontalFlip, v2.RandomVerticalFlip)):
        return f"{kind}(p={t.p:g})"
    if isinstance(t, v2.RandomRotation):
        return f"RandomRotation({_short(t.degrees)}, {mode(t.interpolation)})"
    if isinstance(t, v2.ColorJitter):
        parts = [f"{k}={_short(getattr(t, k))}" for k in ("brightness", "contrast", "saturation", "hue")
                 if getattr(t, k) is not None]
        return f"ColorJitter({', '.join(parts)})"
    if isinstance(t, v2.RandAugment):
        return f"RandAugment(num_ops={t.num_ops}, magnitude={t.magnitude}, num_magnitude_bins={t.num_magnitude_bins})"
    if isinstance(t, v2.TrivialAugmentWide):
        return f"TrivialAugmentWide(num_magnitude_bins={t.num_magnitude_bins})"
    if isinstance(t, v2.AugMix):
        return (f"AugMix(severity={t.severity}, mixture_width={t.mixture_width}, chain_depth={t.chain_depth}, "
                f"alpha={t.alpha:g}, all_ops={t.all_ops})")
    if isinstance(t, v2.AutoAugment):
        return f"AutoAugment(policy={t.policy.value})"
    if isinstance(t, v2.RandomErasing):
        value = "random" if t.value is None else _short(t.value[0] if len(t.value) == 1 else t.value)
        return f"RandomErasing(p={t.p:g}, scale={_short(t.scale)}, ratio={_short(t.ratio)}, value={value})"
    if isinstance(t, v2.Normalize):
        return f"Normalize(mean={_short(t.mean)}, std={_short(t.std)})"
    if isinstance(t, v2.ToDtype):
        return "ToDtype(float32, scale)"
    if kind == "_Channels":
        return f"Channels({t.n})"
    return kind if not hasattr(t, "extra_repr") or not t.extra_repr() else f"{kind}({t.extra_repr()})"


def _side(size: Any) -> Any:
    size = tuple(size) if isinstance(size, (list, tuple)) else (size,)
    return size[0] if len(set(size)) == 1 else size


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)


# --------------------------------------------------------------------------- MixUp / CutMix


class BatchMix:
    """MixUp and/or CutMix of a training batch: ``(x, y) -> (x mixed, soft targets (N, C))``.

    With both, each batch picks one (probability 0.5 each, timm's ``switch_prob``), then mixes
    with that one's ``prob``; an unmixed batch keeps its class indices (cross-entropy on them
    equals cross-entropy on their one-hot targets). torchvision's ``MixUp`` and ``CutMix`` mix
    each example with the next one in the batch (``roll(1)``). Every draw is from torch's
    global RNG, which the training state saves.
    """

    def __init__(self, num_classes: int, mixup: dict[str, float] | None = None,
                 cutmix: dict[str, float] | None = None) -> None:
        self.choices: list[tuple[str, Any, float]] = []
        if mixup is not None:
            self.choices.append(("mixup", v2.MixUp(alpha=float(mixup["alpha"]), num_classes=num_classes),
                                 float(mixup["prob"])))
        if cutmix is not None:
            self.choices.append(("cutmix", v2.CutMix(alpha=float(cutmix["alpha"]), num_classes=num_classes),
                                 float(cutmix["prob"])))
        if not self.choices:
            raise ValueError("BatchMix needs mixup or cutmix")

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pick = int(torch.randint(len(self.choices), ()).item()) if len(self.choices) > 1 else 0
        _, mix, prob = self.choices[pick]
        if prob < 1 and not bool(torch.rand(()) < prob):
            return x, y
        if len(y) < 2:  # nothing to mix with
            return x, y
        mixed, soft = mix(x, y)
        return mixed, soft

    def __repr__(self) -> str:
        parts = [f"{type(m).__name__}(alpha={m.alpha:g}, prob={p:g})" for _, m, p in self.choices]
        return " or ".join(parts) + (" (one of them per batch, p=0.5 each)" if len(parts) > 1 else "")


def batch_mix(num_classes: int, mixup: Any = None, cutmix: Any = None) -> BatchMix | None:
    """The :class:`BatchMix` of ``data.mixup`` / ``data.cutmix`` (specs or mappings), or None when neither is set."""
    plain = [m.model_dump() if hasattr(m, "model_dump") else m for m in (mixup, cutmix)]
    if plain[0] is None and plain[1] is None:
        return None
    return BatchMix(num_classes, mixup=plain[0], cutmix=plain[1])


# --------------------------------------------------------------------------- the plan


SAMPLERS = {
    "random": "random: each epoch a permutation of the training split, from (seed, epoch)",
    "balanced": "balanced: each epoch as many draws as the training split holds, with replacement, every class "
                "equally likely (weight 1 / its count), from (seed, epoch)",
}


def augment_plan(data: Any, mixup: Any, cutmix: Any, sampler: str) -> dict[str, Any]:
    """plan.json's ``data_transforms`` (train and eval, in order), ``data_mix`` and ``data_sampler``.

    ``data``: what :func:`recipec.data.build.build_data` built; ``mixup``, ``cutmix``: as :func:`batch_mix`
    takes them; ``sampler``: ``random`` or ``balanced``.
    """
    mix = batch_mix(max(len(data.classes), 1), mixup, cutmix)
    return {"data_transforms": data.info.get("transforms"),
            "data_mix": None if mix is None else {"mixup": _dumped(mixup), "cutmix": _dumped(cutmix),
                                                  "summary": repr(mix)},
            "data_sampler": {"name": sampler, "summary": SAMPLERS[sampler]}}


def _dumped(spec: Any) -> Any:
    return spec.model_dump() if hasattr(spec, "model_dump") else spec
