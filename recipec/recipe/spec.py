"""The recipe language: one Pydantic model per recipe section.

Every field has a description and an example; they become the hover text of editors that
read ``schemas/recipe.schema.json``. Checks that need no torch live here (bounds, choices,
regexes that must compile, cross-field rules); checks that need the model (does a group
match anything, does a head exist at a path) happen in the compiler.

The shared building blocks are in :mod:`recipec.recipe._fields`; the model-side sections (model,
source) in :mod:`recipec.recipe.spec_model`; groups, freezing and the optimizer in
:mod:`recipec.recipe.spec_optim`; the run-side sections (data, train, export, card) in
:mod:`recipec.recipe.spec_run`. All are re-exported here, so every section is importable from
this module.

This module never imports torch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from recipec.recipe._fields import (
    MAX_INPUT_BYTES,
    SCHEMA_ID,
    FieldProblems,
    BaseSpec,
    parse_size,
    pattern,
)
from recipec.recipe.spec_adapters import AdaptersSpec, adapter_problems
from recipec.recipe.spec_model import AdaptSpec, HeadSpec, ModelSpec, SourceSpec
from recipec.recipe.spec_optim import FreezeSpec, GradualSpec, GroupSpec, OptimizerSpec, SchedulerSpec
from recipec.recipe.spec_run import CardSpec, DataSpec, EarlyStoppingSpec, ExportSpec, OnnxSpec, TrainSpec

# Not used here; the `as` form re-exports them to code that imports them from this module.
from recipec.recipe._fields import ByteSize as ByteSize
from recipec.recipe.spec_run import ExportFormat as ExportFormat
from recipec.recipe.spec_run import EmaSpec as EmaSpec
from recipec.recipe.spec_run import FocalSpec as FocalSpec
from recipec.recipe.spec_run import LossSpec as LossSpec
from recipec.recipe.spec_run import LogSpec, MlflowSpec as MlflowSpec
from recipec.recipe.spec_run import SelectSpec as SelectSpec
from recipec.recipe.spec_optim import CosineSchedulerSpec as CosineSchedulerSpec
from recipec.recipe.spec_optim import NoSchedulerSpec as NoSchedulerSpec
from recipec.recipe.spec_optim import OneCycleSchedulerSpec as OneCycleSchedulerSpec
from recipec.recipe.spec_optim import StepSchedulerSpec as StepSchedulerSpec

__all__ = [
    "AdaptSpec",
    "AdaptersSpec",
    "CardSpec",
    "DataSpec",
    "EarlyStoppingSpec",
    "ExportSpec",
    "FreezeSpec",
    "GradualSpec",
    "GroupSpec",
    "HeadSpec",
    "ModelSpec",
    "OnnxSpec",
    "OptimizerSpec",
    "Recipe",
    "SchedulerSpec",
    "SourceSpec",
    "TrainSpec",
    "parse_size",
]

_DEVICE = pattern(r"^(auto|cpu|mps|cuda(:[0-9]+)?)$", "must be auto, cpu, cuda, cuda:N (e.g. cuda:1) or mps")
_NAME = pattern(r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                "must start with a letter or digit and hold only letters, digits, '.', '_' and '-'")
_EXTENDS = pattern(r"\S", "must be the path of a recipe file, e.g. base.yaml")


# --------------------------------------------------------------------------- recipe


class MultilabelSpec(BaseSpec):
    """task: multilabel options (recipec.train.multilabel)."""

    threshold: float = Field(0.5, gt=0, lt=1, description="A class is predicted when its sigmoid score is at least "
                                                           "this: val_f1_micro, val_f1_macro, val_acc (exact match), "
                                                           "`recipec eval` and the labels `recipec predict` lists.",
                             examples=[0.5])
    tune_thresholds: bool = Field(
        False, description="After training, give each class its own threshold: the sigmoid score that maximises the "
                           "class's F1 on the validation split (of the exported weights; a class without a positive "
                           "there keeps `threshold`). Recorded in the exports' provenance (multilabel.thresholds) and "
                           "used by `recipec eval`, `recipec predict` and Predictor.labels.", examples=[True])


_MULTILABEL_METRICS = ("val_map", "val_f1_micro", "val_f1_macro")


class Recipe(BaseSpec):
    """A recipec recipe: what to start from, what to keep, what to train and how."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, title="recipec recipe",
        json_schema_extra={"$id": SCHEMA_ID, "$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    extends: str | None = Field(
        None, pattern=_EXTENDS,
        description="A recipe this one refines (path relative to this file): deep merge, lists replace; a file "
                    "with extends may leave out what its base gives (model, model.arch, model.head.num_classes).",
        examples=["base.yaml"])
    name: str = Field(pattern=_NAME, max_length=200,
                      description="Run name; output goes to runs/<name>/ unless --out. Default: the file's stem. At most 200 "
                                  "characters (a file name holds 255 bytes; recipec adds suffixes).",
                      examples=["flowers-resnet18"])
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Random seed, below 2**32 like numpy's (the data order is seeded "
                                                         "with seed * 1,000,003 + epoch, which must fit torch's 64 bits).",
                      examples=[0])
    device: str = Field("auto", pattern=_DEVICE, description="auto | cpu | cuda | cuda:N | mps", examples=["cuda:0"])
    model: ModelSpec = Field(description="The base network and its head.", examples=[{"arch": "resnet18"}])
    source: SourceSpec | None = Field(None, description="Weights to transfer in after model.weights.",
                                      examples=[{"checkpoint": "backbone.pt", "exclude": [r"^fc\."]}])
    groups: list[GroupSpec] | None = Field(
        None, description="Layer groups, earliest first; default: the architecture's preset.",
        examples=[[{"name": "body", "match": [r"^(?!fc\.)"]}, {"name": "head", "match": [r"^fc\."]}]])
    freeze: FreezeSpec = Field(default_factory=FreezeSpec, description="Freezing schedule.", examples=[{"trainable": ["head"]}])
    adapters: AdaptersSpec | None = Field(
        None, description="Low-rank adapters (LoRA, DoRA; the peft extra) on base modules; null: none.",
        examples=[{"method": "lora", "r": 8, "alpha": 16, "target": "attention"}])
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, description="Optimizer.", examples=[{"lr": 1e-3}])
    data: DataSpec = Field(default_factory=DataSpec, description="Data.", examples=[{"dataset": "digits"}])
    train: TrainSpec = Field(default_factory=TrainSpec, description="Training.", examples=[{"epochs": 3}])
    export: ExportSpec = Field(default_factory=ExportSpec, description="Exports.", examples=[{"formats": ["safetensors"]}])
    card: CardSpec = Field(default_factory=CardSpec, description="Model card.", examples=[{"license": "mit"}])
    loss: LossSpec = Field(default_factory=LossSpec, description="The training loss (label smoothing, class weights, "
                           "focal).", examples=[{"label_smoothing": 0.1, "class_weights": "auto"}])
    log: LogSpec = Field(default_factory=LogSpec, description="Experiment tracking: TensorBoard and MLflow (optional "
                         "extras).", examples=[{"tensorboard": True, "mlflow": {"experiment": "flowers"}}])
    task: Literal["multiclass", "multilabel"] = Field(
        "multiclass", description="multiclass: one class per image (softmax, cross-entropy). multilabel: any number of "
                                  "classes per image (data.dataset: manifest, labels separated by ';'; a sigmoid per "
                                  "class, binary cross-entropy; val_map, val_f1_micro, val_f1_macro; train.select "
                                  "defaults to val_map).", examples=["multilabel"])
    multilabel: MultilabelSpec = Field(default_factory=MultilabelSpec, description="task: multilabel options.",
                                       examples=[{"threshold": 0.5}])

    @model_validator(mode="before")
    @classmethod
    def _multilabel_select(cls, data: Any) -> Any:
        # task: multilabel selects by val_map unless the recipe names a metric (recipe.yaml then says val_map)
        if not isinstance(data, dict) or data.get("task") != "multilabel":
            return data
        train = data.get("train", {})
        select = train.get("select", {}) if isinstance(train, dict) else None
        if isinstance(select, dict) and "metric" not in select:
            data = dict(data)
            data["train"] = dict(train) | {"select": dict(select) | {"metric": "val_map"}}
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> Recipe:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if self.groups is not None:
            names = [g.name for g in self.groups]
            seen: set[str] = set()
            for i, name in enumerate(names):
                if name in seen:
                    problems.append((("groups", i, "name"), f"group {name!r} is named twice"))
                seen.add(name)
            hint = f"(groups are {', '.join(names)})"
            for i, name in enumerate(self.freeze.trainable or []):
                if name not in seen:
                    problems.append((("freeze", "trainable", i), f"unknown group {name!r} {hint}"))
            for epoch, unfrozen in self.freeze.unfreeze.items():
                for i, name in enumerate(unfrozen):
                    if name not in seen:
                        problems.append((("freeze", "unfreeze", epoch, i), f"unknown group {name!r} {hint}"))
            for name in self.optimizer.group_lr:
                if name not in seen:
                    problems.append((("optimizer", "group_lr", name), f"unknown group {name!r} {hint}"))
            for i, name in enumerate(self.adapters.groups or [] if self.adapters is not None else []):
                if name not in seen:
                    problems.append((("adapters", "groups", i), f"unknown group {name!r} {hint}"))
        if self.freeze.trainable is None and (self.freeze.unfreeze or self.freeze.gradual is not None):
            problems.append((("freeze",), "unfreeze/gradual need freeze.trainable: the groups that train from epoch 0 "
                                          "(without it every group trains from the start, so nothing is left to unfreeze)"))
        for epoch in sorted(self.freeze.unfreeze):
            if epoch >= self.train.epochs:
                problems.append((("freeze", "unfreeze", epoch),
                                 f"epoch {epoch} never starts (train.epochs is {self.train.epochs}; epochs count from 0)"))
        # Only the input is estimated (activations are larger still): a cheap check for sizes no machine holds.
        side = self.data.image_size if isinstance(self.data.image_size, int) else 0  # from_weights: weights' sizes are small
        batch_bytes = self.data.batch_size * self.model.in_channels * side ** 2 * 4
        if batch_bytes > MAX_INPUT_BYTES:
            problems.append((("data", "batch_size"),
                             f"one input batch alone would take {batch_bytes / 2**30:,.0f} GiB (batch_size "
                             f"{self.data.batch_size} x {self.model.in_channels} channels x {self.data.image_size}x"
                             f"{self.data.image_size} x 4 bytes; at most {MAX_INPUT_BYTES // 2**30} GiB); "
                             "lower data.batch_size or data.image_size"))
        if self.freeze.gradual is not None and self.freeze.gradual.start >= self.train.epochs:
            problems.append((("freeze", "gradual", "start"),
                             f"epoch {self.freeze.gradual.start} never starts "
                             f"(train.epochs is {self.train.epochs}; epochs count from 0)"))
        if self.export.weights == "ema" and self.train.ema is None:
            problems.append((("export", "weights"), "ema needs train.ema (e.g. {decay: 0.999}); or export best or last"))
        problems += adapter_problems(self)
        problems += self._task_problems()
        if problems:
            raise FieldProblems(problems)
        return self

    def _task_problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        """What task: multilabel needs (a manifest, a loss it defines), and the metrics only it measures."""
        es = self.train.early_stopping
        metrics = [(("train", "select", "metric"), self.train.select.metric.removesuffix("_ema"))]
        metrics += [(("train", "early_stopping", "metric"), es.metric)] if es is not None else []
        if self.task == "multiclass":
            return [(at, f"{m} is measured for task: multilabel only; set task: multilabel, or choose val_acc or "
                         "val_loss") for at, m in metrics if m in _MULTILABEL_METRICS]
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if self.data.dataset != "manifest":
            problems.append((("data", "dataset"), f"task: multilabel reads its labels from a manifest (a .csv with "
                                                  f"path,label[,split], labels separated by ';'), got "
                                                  f"{self.data.dataset}; set data.dataset: manifest and data.root: "
                                                  "the manifest file"))
        why = {("loss", "class_weights"): "they weight the classes of a softmax",
               ("loss", "focal"): "it is the softmax focal loss",
               ("data", "mixup"): "it mixes class indices", ("data", "cutmix"): "it mixes class indices",
               ("data", "sampler"): "balanced assumes one class per image; use random"}
        used = {("loss", "class_weights"): self.loss.class_weights is not None,
                ("loss", "focal"): self.loss.focal is not None,
                ("data", "mixup"): self.data.mixup is not None, ("data", "cutmix"): self.data.cutmix is not None,
                ("data", "sampler"): self.data.sampler == "balanced"}
        problems += [(at, f"is not supported with task: multilabel ({why[at]})") for at, on in used.items() if on]
        return problems
