"""The training-plan sections of a recipe: layer groups, freezing, the optimizer and its schedule.

Which parameters train at each epoch, and at which learning rate. The root ``Recipe`` lives in
:mod:`recipec.recipe.spec`, which re-exports every name here. This module never imports torch.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from recipec.recipe._fields import MAX_EPOCHS, MAX_LR, FieldProblems, Regex, check_regex, BaseSpec, pattern

__all__ = ["CosineSchedulerSpec", "FreezeSpec", "GradualSpec", "GroupSpec", "NoSchedulerSpec", "OneCycleSchedulerSpec",
           "OptimizerSpec", "SchedulerSpec", "StepSchedulerSpec"]


# --------------------------------------------------------------------------- groups & freezing


_GROUP = pattern(r"^[A-Za-z_][A-Za-z0-9_.-]*$",
                 "must start with a letter or '_' and hold only letters, digits, '.', '_' and '-'")
# epochs 0 to MAX_EPOCHS - 1 as mapping keys: JSON Schema checks keys by pattern (editors ignore propertyNames)
_EPOCH_KEY = f"^0*[0-9]{{1,{len(str(MAX_EPOCHS - 1))}}}$"
assert 10 ** len(str(MAX_EPOCHS - 1)) == MAX_EPOCHS, "_EPOCH_KEY bounds epochs by their number of digits"


def _epoch_keys(schema: dict[str, Any]) -> None:
    schema.pop("propertyNames", None)
    schema["patternProperties"] = {_EPOCH_KEY: schema.pop("additionalProperties")}
    schema["additionalProperties"] = False


class GroupSpec(BaseSpec):
    """A named layer group: the parameters whose name matches one of the regexes."""

    name: str = Field(pattern=_GROUP, description="Group name, used by freeze and optimizer.group_lr.",
                      examples=["layer4"])
    match: list[Regex] = Field(min_length=1, description="Regexes searched in parameter names.", examples=[[r"^layer4\."]])


class GradualSpec(BaseSpec):
    """ULMFiT gradual unfreezing: one more group from the top every `every` epochs, from epoch `start`."""

    every: int = Field(1, ge=1, le=MAX_EPOCHS, description="Epochs between two unfreezings (at most 10,000, "
                                                           "the bound of train.epochs).", examples=[5])
    start: int = Field(1, ge=0, lt=MAX_EPOCHS, description="Epoch of the first unfreezing.", examples=[5])


class FreezeSpec(BaseSpec):
    """Which groups train at each epoch, and what BatchNorm of frozen groups does."""

    trainable: list[str] | None = Field(
        None, description="Groups trainable from epoch 0; null: every group (full fine-tuning).", examples=[["head"]])
    unfreeze: dict[Annotated[int, Field(ge=0, lt=MAX_EPOCHS, strict=True)], list[str]] = Field(
        default_factory=dict, description="Epoch -> groups unfrozen at the start of that epoch.",
        examples=[{3: ["layer4"], 5: ["layer3"]}], json_schema_extra=_epoch_keys)
    gradual: GradualSpec | None = Field(
        None, description="Or/and: unfreeze one more group from the top every N epochs.", examples=[{"every": 1, "start": 1}])
    batchnorm: Literal["frozen", "train"] = Field(
        "frozen", description="frozen: BatchNorm layers of frozen groups stay in eval mode (running statistics kept). "
                              "train: they keep updating running statistics.", examples=["train"])
    dropout: Literal["frozen", "train"] = Field(
        "frozen", description="frozen: every other module of frozen groups runs in eval mode, so dropout, stochastic depth "
                              "and other train-mode randomness stop there (a frozen part is a fixed function). "
                              "train: they stay random while frozen, as model.train() leaves them.", examples=["train"])

    @field_validator("unfreeze", mode="before")
    @classmethod
    def _epoch_text(cls, value: Any) -> Any:
        # A key written as text (JSON's "3") is an epoch when it is digits, as the schema's key pattern says;
        # the rest stays text for the strict int keys to refuse (pydantic alone reads "3.0" or "+3" as 3).
        if isinstance(value, dict):
            return {int(k) if isinstance(k, str) and re.fullmatch("[0-9]+", k) else k: v for k, v in value.items()}
        return value


# --------------------------------------------------------------------------- optimizer


class _SchedulerBase(BaseSpec):
    warmup_epochs: float = Field(0, ge=0, le=MAX_EPOCHS,
                                 description="Linear warmup over this many epochs (fractions allowed), from 1% of each group's lr.",
                                 examples=[1])


class NoSchedulerSpec(BaseSpec):
    """Constant learning rates."""

    name: Literal["none"] = Field(description="Scheduler kind.", examples=["none"])


class CosineSchedulerSpec(_SchedulerBase):
    """Cosine decay to min_factor x the initial lr of each group, after warmup."""

    name: Literal["cosine"] = Field(description="Scheduler kind.", examples=["cosine"])
    min_factor: float = Field(0.0, ge=0, le=1, description="Final lr as a fraction of each group's initial lr.",
                              examples=[0.01])


class StepSchedulerSpec(_SchedulerBase):
    """Multiply every group's lr by gamma every step_epochs epochs."""

    name: Literal["step"] = Field(description="Scheduler kind.", examples=["step"])
    step_epochs: int = Field(ge=1, le=MAX_EPOCHS, description="Epochs between two decays.", examples=[10])
    gamma: float = Field(0.1, gt=0, le=1, description="Decay factor.", examples=[0.1])


class OneCycleSchedulerSpec(BaseSpec):
    """One-cycle policy: cosine up to each group's lr over pct_start of training, then cosine down."""

    name: Literal["onecycle"] = Field(description="Scheduler kind.", examples=["onecycle"])
    pct_start: float = Field(0.25, gt=0, lt=1, description="Fraction of training spent increasing the lr.", examples=[0.3])
    div_factor: float = Field(25.0, ge=1, le=1e6, description="Initial lr = lr / div_factor (at most 1e6: below that "
                                                              "an lr moves no float32 weight).", examples=[25])
    final_div_factor: float = Field(1e4, ge=1, le=1e9, description="Final lr = initial lr / final_div_factor (at most 1e9).",
                                    examples=[1e4])


SchedulerSpec = Annotated[
    NoSchedulerSpec | CosineSchedulerSpec | StepSchedulerSpec | OneCycleSchedulerSpec,
    Field(discriminator="name"),
]


class OptimizerSpec(BaseSpec):
    """Optimizer, discriminative learning rates and schedule."""

    name: Literal["adamw", "adam", "sgd"] = Field("adamw", description="Optimizer.", examples=["sgd"])
    lr: float = Field(1e-3, gt=0, le=MAX_LR, description="Learning rate of the last group (the head); at most 100 "
                                                       "(large-batch SGD uses up to ~30; beyond, weights diverge at once).",
                      examples=[3e-4])
    lr_decay: float = Field(
        1.0, ge=1, le=100, description="Discriminative learning rates: group i of n gets lr / lr_decay ** (n - 1 - i); "
                                       "1 means one lr. At most 100 (ULMFiT uses 2.6; beyond, early groups get lrs "
                                       "that underflow).",
        examples=[2.6])
    group_lr: dict[str, Annotated[float, Field(gt=0, le=MAX_LR)]] = Field(
        default_factory=dict, description="Explicit learning rates by group name; they win over lr_decay.",
        examples=[{"stem": 1e-5}])
    weight_decay: float = Field(0.0, ge=0, le=10, description="Decoupled (adamw) or L2 (adam, sgd) weight decay; at most "
                                                              "10 (common values are 1e-4 to 0.3).", examples=[0.01])
    no_weight_decay: list[str] = Field(
        default_factory=lambda: ["bias", "norm"],
        description="Parameters without weight decay: 'bias' (every bias), 'norm' (parameters of normalisation layers), "
                    "or a regex searched in the parameter name.",
        examples=[["bias", "norm", r"pos_embed"]])
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only: momentum.", examples=[0.9])
    nesterov: bool = Field(False, description="sgd only: Nesterov momentum.", examples=[True])
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        (0.9, 0.999), description="adam/adamw only: coefficients of the running averages.", examples=[[0.9, 0.95]])
    scheduler: SchedulerSpec = Field(
        default_factory=lambda: NoSchedulerSpec(name="none"),
        description="Learning-rate schedule; every group is scaled from its own initial lr, so ratios hold.",
        examples=[{"name": "cosine", "warmup_epochs": 1}])

    @model_validator(mode="after")
    def _regexes(self) -> OptimizerSpec:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for i, entry in enumerate(self.no_weight_decay):
            if entry not in ("bias", "norm"):
                try:
                    check_regex(entry)
                except ValueError as exc:
                    problems.append((("no_weight_decay", i), str(exc)))
        if problems:
            raise FieldProblems(problems)
        return self
