"""The recipe language: one Pydantic model per recipe section.

Every field has a description and an example; they become the hover text of editors that
read ``schemas/recipe.schema.json``. Checks that need no torch live here (bounds, choices,
regexes that must compile, cross-field rules); checks that need the model (does a group
match anything, does a head exist at a path) happen in the compiler.

The shared building blocks are in :mod:`recipec.recipe._fields`; the run-side sections (data,
train, export, card) in :mod:`recipec.recipe.spec_run`. Both are re-exported here, so every
section is importable from this module.

This module never imports torch.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from recipec.recipe._fields import (
    MAX_CLASSES,
    MAX_EPOCHS,
    MAX_INPUT_BYTES,
    MAX_LR,
    SCHEMA_ID,
    FieldProblems,
    Regex,
    _check_regex,
    _Spec,
    parse_size,
)
from recipec.recipe.spec_run import CardSpec, DataSpec, EarlyStoppingSpec, ExportSpec, OnnxSpec, TrainSpec

# Not used here; the `as` form re-exports them to code that imports them from this module.
from recipec.recipe._fields import ByteSize as ByteSize
from recipec.recipe.spec_run import ExportFormat as ExportFormat
from recipec.recipe.spec_run import EmaSpec as EmaSpec
from recipec.recipe.spec_run import FocalSpec as FocalSpec
from recipec.recipe.spec_run import LossSpec as LossSpec
from recipec.recipe.spec_run import LogSpec, MlflowSpec as MlflowSpec
from recipec.recipe.spec_run import SelectSpec as SelectSpec

__all__ = [
    "AdaptSpec",
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

_ARCH = r"^([A-Za-z_][A-Za-z0-9_]*|timm/[A-Za-z0-9_]+|[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*)$"
_DEVICE = r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


# --------------------------------------------------------------------------- model


class HeadSpec(_Spec):
    """The new classifier that replaces the architecture's own."""

    num_classes: int = Field(
        ge=1, le=MAX_CLASSES, description="Number of output logits of the new head (at most 1,000,000: the largest "
                                          "label sets in use, face identities, are about that; a head beyond it holds "
                                          "billions of weights).", examples=[5])
    type: Literal["linear", "mlp"] = Field(
        "linear", description="linear: one Linear layer. mlp: hidden Linear layers with activation and dropout, then the output Linear.",
        examples=["mlp"])
    hidden: list[Annotated[int, Field(ge=1, le=65_536)]] | None = Field(
        None, max_length=16, description="mlp only: sizes of the hidden layers (default [512]); at most 16 layers of "
                                         "65,536 (one such layer already holds 4 billion weights).", examples=[[512]])
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="Dropout probability: before the Linear of a linear head; after each hidden activation of an mlp head.", examples=[0.2])
    activation: Literal["relu", "gelu", "silu"] | None = Field(
        None, description="mlp only: activation between hidden layers (default relu).", examples=["gelu"])
    at: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_-]+)*$",
        description="Dotted path of the module to replace (e.g. fc, classifier.6, heads.head); default: the family's classifier. "
                    "A negative index such as classifier.-1 counts from the end of a Sequential.",
        examples=["classifier.-1"])

    @model_validator(mode="after")
    def _mlp_options(self) -> HeadSpec:
        if self.type == "linear":
            wrong = [k for k in ("hidden", "activation") if getattr(self, k) is not None]
            if wrong:
                raise FieldProblems([((k,), "only applies to type: mlp (this head is type: linear); "
                                            "remove it or set type: mlp") for k in wrong])
        elif self.hidden is not None and not self.hidden:
            raise FieldProblems([(("hidden",), "an mlp head needs at least one hidden size, e.g. hidden: [512]")])
        return self


class ModelSpec(_Spec):
    """The base network and its new head."""

    arch: str = Field(
        pattern=_ARCH,
        description='A torchvision classification model name (resnet18, vit_b_16, ...), timm/<name> for a timm model '
                    "(the timm extra: pip install 'recipec[timm]'), or \"package.module:factory\" for your own.",
        examples=["resnet18", "timm/convnext_tiny", "mypackage.nets:make_net"])
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments passed to the factory.", examples=[{"dropout": 0.1}])
    weights: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_]+$",
        description="torchvision weights enum name (IMAGENET1K_V1, DEFAULT, ...), a timm pretrained tag "
                    "(in12k_ft_in1k, lvd142m, ...; read from the Hugging Face hub cache), or null for random initialisation.",
        examples=["IMAGENET1K_V1", "DEFAULT", "in1k"])
    in_channels: int = Field(
        3, ge=1, le=1024, description="Input channels; when not 3, the first convolution is rebuilt and pretrained filters "
                                      "adapted (sum for 1 channel, repeat and rescale otherwise). At most 1024: "
                                      "hyperspectral sensors record a few hundred bands.", examples=[1])
    head: HeadSpec | None = Field(
        None, description="The new classifier; null keeps the architecture's own.", examples=[{"num_classes": 5}])
    group_matcher: Literal["coarse", "fine"] = Field(
        "coarse", description="timm/<name> only: the default layer groups come from the model's group_matcher, "
                              "coarse (stages) or fine (blocks, as timm's layer decay numbers them).", examples=["fine"])

    @model_validator(mode="after")
    def _timm(self) -> ModelSpec:
        import importlib.util

        # a non-default value, not merely a written one: a dumped recipe.yaml writes every field, defaults included
        if self.group_matcher != type(self).model_fields["group_matcher"].default and not self.arch.startswith("timm/"):
            raise FieldProblems([(("group_matcher",), f"only applies to timm/<name> architectures, not {self.arch!r}; remove it")])
        if self.arch.startswith("timm/") and importlib.util.find_spec("timm") is None:
            raise FieldProblems([(("arch",), f"{self.arch!r} needs the timm extra, which is not installed: "
                                             "pip install 'recipec[timm]'")])
        return self

    @model_validator(mode="after")
    def _kwargs_classes(self) -> ModelSpec:
        # kwargs go to the factory as they are; the one size every classifier factory takes is bounded like the head's
        n = self.kwargs.get("num_classes")
        if isinstance(n, (int, float)) and not isinstance(n, bool) and not 1 <= n <= MAX_CLASSES:
            raise FieldProblems([(("kwargs", "num_classes"), f"must be from 1 to {MAX_CLASSES:,}, got {n}")])
        return self
    aux_loss_weight: float = Field(
        0.4, ge=0, le=1e3,
        description="googlenet / inception_v3 with kwargs.aux_logits: true: the training loss adds this times the "
                    "cross-entropy of each auxiliary classifier (they get the new class count), in the epochs their "
                    "group trains; evaluation and exports use the main output only.", examples=[0.3])


# --------------------------------------------------------------------------- source


class AdaptSpec(_Spec):
    """A shape adaptation applied to source tensors whose (renamed) key matches."""

    match: Regex = Field(description="Regex searched in the renamed key.", examples=[r"^conv1\.weight$"])
    rule: Literal["input_channels", "truncate_pad", "class_subset", "pos_embed"] = Field(
        description="input_channels: adapt a first conv to the model's input channels (timm adapt_input_conv). "
                    "truncate_pad: copy the overlapping block, zero the rest. "
                    "class_subset: keep the rows `indices` of a source classifier. "
                    "pos_embed: resample a ViT's absolute position embedding to the model's patch grid "
                    "(timm resample_abs_pos_embed: bicubic, prefix tokens kept).",
        examples=["input_channels"])
    indices: list[Annotated[int, Field(ge=0, lt=MAX_CLASSES)]] | None = Field(
        None, max_length=MAX_CLASSES,
        description="class_subset only: source rows (classes) to keep, in the model's class order (below 1,000,000, "
                    "the bound of num_classes).",
        examples=[[0, 3, 7]])

    @model_validator(mode="after")
    def _indices(self) -> AdaptSpec:
        if self.rule == "class_subset" and not self.indices:
            raise FieldProblems([(("rule",), "class_subset needs indices: the source classes to keep, e.g. indices: [0, 3, 7]")])
        if self.rule != "class_subset" and self.indices is not None:
            raise FieldProblems([(("indices",), f"only applies to rule class_subset (this rule is {self.rule})")])
        return self


class SourceSpec(_Spec):
    """Weights to transfer into the model, applied after model.weights."""

    checkpoint: str | None = Field(
        None, description="Path (relative to the recipe) of a .pt/.pth/.bin/.safetensors file or a sharded *.index.json.",
        examples=["checkpoints/backbone.safetensors"])
    recipe: str | None = Field(
        None, description="Or: a recipe (relative path) whose built result is the source.", examples=["upstream.yaml"])
    state_dict_key: str = Field(
        "auto", description="Where the state dict sits in the file: auto tries state_dict_ema, model_ema, "
                            "model_state_dict, state_dict, model, then the raw mapping; or a dotted key.",
        examples=["auto", "model_state_dict"])
    sha256: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{64}$", description="Optional pin; a file with another digest is an error.",
        examples=["9b2f1c8e0d4e6a7b3c5f1e2d8a9b0c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b"])
    rename: list[tuple[Regex, str]] = Field(
        default_factory=list, description="Ordered regex substitutions on source keys (re.sub; \\1 groups allowed).",
        examples=[[[r"^module\.", ""], [r"^backbone\.(\d+)\.", r"layer\1."]]])
    include: list[Regex] = Field(
        default_factory=list, description="Regexes on the renamed key; only matching keys are loaded. Empty: every key.",
        examples=[[r"^layer[1-4]\."]])
    exclude: list[Regex] = Field(
        default_factory=list, description="Regexes on the renamed key; matching keys are not loaded.",
        examples=[[r"^fc\."]])
    adapt: list[AdaptSpec] = Field(
        default_factory=list, description="Shape adaptations by renamed-key regex.",
        examples=[[{"match": r"^conv1\.weight$", "rule": "input_channels"}]])
    on_mismatch: Literal["error", "skip"] = Field(
        "error", description="What a shape mismatch not covered by adapt does: error stops, skip leaves the model tensor "
                             "as it was and reports it.", examples=["skip"])
    require_all: bool = Field(
        True, description="Every model tensor outside the new head must be loaded.", examples=[False])
    allow_globals: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")]] = Field(
        default_factory=list, description="Pickle globals (module.Name) a torch checkpoint may contain; nothing else is unpickled.",
        examples=[["argparse.Namespace"]])
    timm_filter: bool = Field(
        False, description="timm models only: run the installed timm's own checkpoint_filter_fn of model.arch on the "
                           "file's state dict first (official ViT, DeiT, ConvNeXt... layouts -> timm's), then rename, "
                           "include, exclude and adapt as usual.", examples=[True])

    @model_validator(mode="after")
    def _one_source(self) -> SourceSpec:
        if self.checkpoint and self.recipe:
            raise FieldProblems([(("recipe",), "set either checkpoint or recipe, not both")])
        if not self.checkpoint and not self.recipe:
            raise ValueError("needs checkpoint (a file) or recipe (an upstream recipe)")
        return self


# --------------------------------------------------------------------------- groups & freezing


class GroupSpec(_Spec):
    """A named layer group: the parameters whose name matches one of the regexes."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$", description="Group name, used by freeze and optimizer.group_lr.",
                      examples=["layer4"])
    match: list[Regex] = Field(min_length=1, description="Regexes searched in parameter names.", examples=[[r"^layer4\."]])


class GradualSpec(_Spec):
    """ULMFiT gradual unfreezing: one more group from the top every `every` epochs, from epoch `start`."""

    every: int = Field(1, ge=1, le=MAX_EPOCHS, description="Epochs between two unfreezings (at most 10,000, "
                                                           "the bound of train.epochs).", examples=[5])
    start: int = Field(1, ge=0, lt=MAX_EPOCHS, description="Epoch of the first unfreezing.", examples=[5])


class FreezeSpec(_Spec):
    """Which groups train at each epoch, and what BatchNorm of frozen groups does."""

    trainable: list[str] | None = Field(
        None, description="Groups trainable from epoch 0; null: every group (full fine-tuning).", examples=[["head"]])
    unfreeze: dict[Annotated[int, Field(ge=0, lt=MAX_EPOCHS)], list[str]] = Field(
        default_factory=dict, description="Epoch -> groups unfrozen at the start of that epoch.",
        examples=[{3: ["layer4"], 5: ["layer3"]}], json_schema_extra={"propertyNames": {"pattern": "^[0-9]+$"}})
    gradual: GradualSpec | None = Field(
        None, description="Or/and: unfreeze one more group from the top every N epochs.", examples=[{"every": 1, "start": 1}])
    batchnorm: Literal["frozen", "train"] = Field(
        "frozen", description="frozen: BatchNorm layers of frozen groups stay in eval mode (running statistics kept). "
                              "train: they keep updating running statistics.", examples=["train"])
    dropout: Literal["frozen", "train"] = Field(
        "frozen", description="frozen: every other module of frozen groups runs in eval mode, so dropout, stochastic depth "
                              "and other train-mode randomness stop there (a frozen part is a fixed function). "
                              "train: they stay random while frozen, as model.train() leaves them.", examples=["train"])


# --------------------------------------------------------------------------- optimizer


class _SchedulerBase(_Spec):
    warmup_epochs: float = Field(0, ge=0, le=MAX_EPOCHS,
                                 description="Linear warmup over this many epochs (fractions allowed), from 1% of each group's lr.",
                                 examples=[1])


class NoSchedulerSpec(_Spec):
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


class OneCycleSchedulerSpec(_Spec):
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


class OptimizerSpec(_Spec):
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
                    _check_regex(entry)
                except ValueError as exc:
                    problems.append((("no_weight_decay", i), str(exc)))
        if problems:
            raise FieldProblems(problems)
        return self


# --------------------------------------------------------------------------- recipe


class MultilabelSpec(_Spec):
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


class Recipe(_Spec):
    """A recipec recipe: what to start from, what to keep, what to train and how."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, title="recipec recipe",
        json_schema_extra={"$id": SCHEMA_ID, "$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    extends: str | None = Field(
        None, description="A recipe this one refines (path relative to this file): deep merge, lists replace.",
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
