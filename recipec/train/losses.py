"""The training loss (the recipe's ``loss:`` section): cross-entropy with label smoothing,
class weights and focal loss.

Every criterion takes logits ``(N, C)`` and either class indices ``(N,)`` or soft targets
``(N, C)`` (MixUp/CutMix), like ``F.cross_entropy``, and reduces as it does: with class
indices a weighted mean, ``sum_i l_i / sum_i w[y_i]``; with soft targets the plain mean over
the batch. Label smoothing turns a target ``t`` into ``(1 - eps) * t + eps / C``.

Focal loss (Lin et al. 2017, softmax form) weights each class term of the cross-entropy by
``(1 - p_c) ** gamma``: ``l_i = -sum_c w_c t_ic (1 - p_ic) ** gamma log p_ic``, which is
exactly the cross-entropy above at ``gamma = 0``.

``class_weights: auto`` is scikit-learn's "balanced": ``w_c = n / (C * n_c)`` over the
training split (n examples, C classes, n_c of class c), so the weights of the training
examples average 1 and the loss keeps its scale.

Validation loss (``val_loss``) stays the plain cross-entropy, as timm validates, so that it
compares across recipes whatever their training loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from recipec.errors import RecipeError

__all__ = ["Criterion", "LossConfig", "build_criterion", "criterion_of", "focal_loss", "loss_plan",
           "resolve_class_weights"]

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LossConfig:
    """The training loss as plain values (the compiler reads them from the recipe's ``loss:``).

    Attributes:
        label_smoothing: eps.
        focal_gamma: the focal loss's gamma, or None for cross-entropy.
        class_weights: class -> weight, ``"auto"`` (inverse frequency over the training split), or None.
    """

    label_smoothing: float = 0.0
    focal_gamma: float | None = None
    class_weights: Mapping[str, float] | Literal["auto"] | None = None


def resolve_class_weights(spec: Any, classes: Sequence[str], train_per_class: Mapping[str, int] | None) -> list[float] | None:
    """The weight of each class, in ``classes`` order, from ``loss.class_weights`` (None: all 1).

    Raises:
        RecipeError: the mapping names a class the data lacks, or ``auto`` meets a class without
            training examples (at the field ``class_weights``).
    """
    at = ("class_weights",)
    if spec is None:
        return None
    if spec == "auto":
        counts = [int((train_per_class or {}).get(c, 0)) for c in classes]
        empty = [c for c, n in zip(classes, counts) if n == 0]
        if empty:
            raise RecipeError([(at, f"auto: class {', '.join(map(repr, empty[:5]))} has no training examples, so its "
                                    "inverse frequency is infinite; give the weights as a mapping, or add examples")])
        n = sum(counts)
        return [n / (len(classes) * k) for k in counts]
    unknown = [name for name in spec if name not in classes]
    if unknown:
        shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
        raise RecipeError([((*at, name), f"unknown class {name!r} (the classes are {shown})") for name in unknown])
    return [float(spec.get(c, 1.0)) for c in classes]


def build_criterion(*, label_smoothing: float = 0.0, class_weights: Sequence[float] | None = None,
                    focal_gamma: float | None = None, device: torch.device | str = "cpu") -> Criterion:
    """The training criterion ``(logits, target) -> loss`` (see the module docstring for the formula)."""
    weight = None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float32, device=device)
    if focal_gamma is None:
        def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            # under autocast cross_entropy computes in float32, the weights included
            return F.cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing)
        return cross_entropy

    def focal(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits, target, gamma=focal_gamma, weight=weight, label_smoothing=label_smoothing)
    return focal


def focal_loss(logits: torch.Tensor, target: torch.Tensor, *, gamma: float, weight: torch.Tensor | None = None,
               label_smoothing: float = 0.0) -> torch.Tensor:
    """Softmax focal loss, reduced as ``F.cross_entropy`` reduces (equal to it at ``gamma = 0``)."""
    logp = F.log_softmax(logits.float(), dim=1)  # (N, C)
    classes = logits.shape[1]
    hard = target.dim() == 1
    soft = F.one_hot(target, classes).float() if hard else target.float()
    if label_smoothing:
        soft = soft * (1 - label_smoothing) + label_smoothing / classes
    w = torch.ones(classes, device=logits.device) if weight is None else weight.float().to(logits.device)
    per_class = -(1 - logp.exp()).pow(gamma) * logp * soft * w  # (N, C)
    total = per_class.sum()
    if hard:
        return total / w[target].sum()
    return total / logits.shape[0]


def loss_plan(config: LossConfig, classes: Sequence[str], train_per_class: Mapping[str, int] | None) -> dict[str, Any]:
    """What plan.json records of a (multiclass) training loss, with the class weights resolved.

    Raises:
        RecipeError: the class weights do not fit the data (at the field ``class_weights``).
    """
    weights = resolve_class_weights(config.class_weights, classes, train_per_class)
    return {
        "name": "focal" if config.focal_gamma is not None else "cross_entropy",
        "label_smoothing": config.label_smoothing,
        "focal_gamma": config.focal_gamma,
        "class_weights": None if weights is None else dict(zip(classes, weights)),
        "class_weights_from": None if config.class_weights is None else (
            "auto: n / (C * n_c) over the training split" if config.class_weights == "auto" else "the recipe"),
        "validation": "plain cross-entropy",
    }


def criterion_of(config: LossConfig, planned: Mapping[str, Any], device: torch.device | str) -> Criterion:
    """The criterion of ``config``, with the class weights as plan.json's ``loss`` (``planned``,
    from :func:`loss_plan`) resolved them."""
    weights = planned["class_weights"]
    return build_criterion(label_smoothing=config.label_smoothing,
                           class_weights=None if weights is None else list(weights.values()),
                           focal_gamma=config.focal_gamma, device=device)
