"""The recipe language: one Pydantic model per recipe section.

Every field has a description and an example; they become the hover text of editors that
read ``schemas/recipe.schema.json``. Checks that need no torch live here (bounds, choices,
regexes that must compile, cross-field rules); checks that need the model (does a group
match anything, does a head exist at a path) happen in the compiler.

This module never imports torch.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

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

SCHEMA_ID = "https://recipec.dev/schemas/recipe.schema.json"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class FieldProblems(ValueError):
    """Raised by cross-field validators: problems at paths relative to the model being validated.

    The loader turns each into its own located error line; ``str()`` reads well without it.
    """

    def __init__(self, problems: list[tuple[tuple[str | int, ...], str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(map(str, path))}: {msg}" if path else msg for path, msg in problems))


def _check_regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:  # huge repeat counts, deep nesting
        raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None
    return pattern


Regex = Annotated[str, AfterValidator(_check_regex)]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(value: Any) -> Any:
    """Turn ``"2GB"``, ``"500MiB"`` or ``1000000`` into a number of bytes.

    Anything it cannot read is returned unchanged, for the int validator to reject.
    """
    if isinstance(value, str):
        match = _SIZE.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a size; write e.g. 2GB, 500MB, 512MiB or a byte count")
        number, unit = match.groups()
        try:
            return int(float(number) * _UNITS[(unit or "").upper()])
        except OverflowError:
            raise ValueError(f"{value!r} is too large to be a size") from None
    return value


ByteSize = Annotated[
    int,
    BeforeValidator(parse_size),
    Field(ge=1),
    WithJsonSchema({
        "anyOf": [
            {"type": "integer", "minimum": 1},
            {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*([KMGTkmgt][iI]?[bB]|[bB])?\s*$"},
        ],
    }),
]

_ARCH = r"^([A-Za-z_][A-Za-z0-9_]*|[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*)$"
_DEVICE = r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


# --------------------------------------------------------------------------- model


class HeadSpec(_Spec):
    """The new classifier that replaces the architecture's own."""

    num_classes: int = Field(
        ge=1, description="Number of output logits of the new head.", examples=[5])
    type: Literal["linear", "mlp"] = Field(
        "linear", description="linear: one Linear layer. mlp: hidden Linear layers with activation and dropout, then the output Linear.",
        examples=["mlp"])
    hidden: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, description="mlp only: sizes of the hidden layers (default [512]).", examples=[[512]])
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
        description='A torchvision classification model name (resnet18, vit_b_16, ...) or "package.module:factory" for your own.',
        examples=["resnet18", "mypackage.nets:make_net"])
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments passed to the factory.", examples=[{"dropout": 0.1}])
    weights: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_]+$",
        description="torchvision weights enum name (IMAGENET1K_V1, DEFAULT, ...) or null for random initialisation.",
        examples=["IMAGENET1K_V1", "DEFAULT"])
    in_channels: int = Field(
        3, ge=1, description="Input channels; when not 3, the first convolution is rebuilt and pretrained filters adapted "
                             "(sum for 1 channel, repeat and rescale otherwise).", examples=[1])
    head: HeadSpec | None = Field(
        None, description="The new classifier; null keeps the architecture's own.", examples=[{"num_classes": 5}])


# --------------------------------------------------------------------------- source


class AdaptSpec(_Spec):
    """A shape adaptation applied to source tensors whose (renamed) key matches."""

    match: Regex = Field(description="Regex searched in the renamed key.", examples=[r"^conv1\.weight$"])
    rule: Literal["input_channels", "truncate_pad", "class_subset"] = Field(
        description="input_channels: adapt a first conv to the model's input channels (timm adapt_input_conv). "
                    "truncate_pad: copy the overlapping block, zero the rest. "
                    "class_subset: keep the rows `indices` of a source classifier.",
        examples=["input_channels"])
    indices: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="class_subset only: source rows (classes) to keep, in the model's class order.",
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

    every: int = Field(1, ge=1, description="Epochs between two unfreezings.", examples=[5])
    start: int = Field(1, ge=0, description="Epoch of the first unfreezing.", examples=[5])


class FreezeSpec(_Spec):
    """Which groups train at each epoch, and what BatchNorm of frozen groups does."""

    trainable: list[str] | None = Field(
        None, description="Groups trainable from epoch 0; null: every group (full fine-tuning).", examples=[["head"]])
    unfreeze: dict[Annotated[int, Field(ge=0)], list[str]] = Field(
        default_factory=dict, description="Epoch -> groups unfrozen at the start of that epoch.",
        examples=[{3: ["layer4"], 5: ["layer3"]}], json_schema_extra={"propertyNames": {"pattern": "^[0-9]+$"}})
    gradual: GradualSpec | None = Field(
        None, description="Or/and: unfreeze one more group from the top every N epochs.", examples=[{"every": 1, "start": 1}])
    batchnorm: Literal["frozen", "train"] = Field(
        "frozen", description="frozen: BatchNorm layers of frozen groups stay in eval mode (running statistics kept). "
                              "train: they keep updating running statistics.", examples=["train"])


# --------------------------------------------------------------------------- optimizer


class _SchedulerBase(_Spec):
    warmup_epochs: float = Field(0, ge=0, description="Linear warmup over this many epochs (fractions allowed), from 1% of each group's lr.",
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
    step_epochs: int = Field(ge=1, description="Epochs between two decays.", examples=[10])
    gamma: float = Field(0.1, gt=0, le=1, description="Decay factor.", examples=[0.1])


class OneCycleSchedulerSpec(_Spec):
    """One-cycle policy: cosine up to each group's lr over pct_start of training, then cosine down."""

    name: Literal["onecycle"] = Field(description="Scheduler kind.", examples=["onecycle"])
    pct_start: float = Field(0.25, gt=0, lt=1, description="Fraction of training spent increasing the lr.", examples=[0.3])
    div_factor: float = Field(25.0, ge=1, description="Initial lr = lr / div_factor.", examples=[25])
    final_div_factor: float = Field(1e4, ge=1, description="Final lr = initial lr / final_div_factor.", examples=[1e4])


SchedulerSpec = Annotated[
    NoSchedulerSpec | CosineSchedulerSpec | StepSchedulerSpec | OneCycleSchedulerSpec,
    Field(discriminator="name"),
]


class OptimizerSpec(_Spec):
    """Optimizer, discriminative learning rates and schedule."""

    name: Literal["adamw", "adam", "sgd"] = Field("adamw", description="Optimizer.", examples=["sgd"])
    lr: float = Field(1e-3, gt=0, description="Learning rate of the last group (the head).", examples=[3e-4])
    lr_decay: float = Field(
        1.0, ge=1, description="Discriminative learning rates: group i of n gets lr / lr_decay ** (n - 1 - i); 1 means one lr.",
        examples=[2.6])
    group_lr: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict, description="Explicit learning rates by group name; they win over lr_decay.",
        examples=[{"stem": 1e-5}])
    weight_decay: float = Field(0.0, ge=0, description="Decoupled (adamw) or L2 (adam, sgd) weight decay.", examples=[0.01])
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


# --------------------------------------------------------------------------- data


class DataSpec(_Spec):
    """Dataset, split and preprocessing."""

    dataset: Literal["imagefolder", "digits", "fake", "cifar10", "cifar100", "mnist", "fashionmnist"] = Field(
        "digits", description="imagefolder (root/<class>/<image>), digits (8x8 handwritten digits shipped with "
                              "scikit-learn), fake (random images), or a torchvision dataset already under root.",
        examples=["imagefolder"])
    root: str | None = Field(None, description="Dataset directory (relative to the recipe).", examples=["data/flowers"])
    classes: list[str] | None = Field(None, min_length=1, description="Subset and order of classes.", examples=[["cat", "dog"]])
    per_class: int | None = Field(None, ge=1, description="Few-shot cap on training examples per class.", examples=[16])
    val_fraction: float = Field(0.2, ge=0, lt=1, description="Fraction of the data held out for validation.", examples=[0.2])
    image_size: int = Field(224, ge=8, description="Side of the square input images.", examples=[224])
    normalize: Literal["from_weights", "imagenet", "none"] = Field(
        "from_weights", description="from_weights: the mean/std of the pretrained weights' transforms; imagenet; none.",
        examples=["imagenet"])
    augment: list[Literal["hflip", "vflip", "random_crop", "random_resized_crop", "color_jitter", "rotate"]] = Field(
        default_factory=list, description="Training augmentations.", examples=[["hflip", "random_resized_crop"]])
    batch_size: int = Field(32, ge=1, description="Examples per step.", examples=[64])
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.", examples=[2])

    @model_validator(mode="after")
    def _root(self) -> DataSpec:
        if self.dataset not in ("digits", "fake") and not self.root:
            raise FieldProblems([(("dataset",), f"{self.dataset} needs root: the directory that holds it")])
        return self


# --------------------------------------------------------------------------- train


class EarlyStoppingSpec(_Spec):
    """Stop when a validation metric has not improved for `patience` epochs."""

    metric: Literal["val_acc", "val_loss"] = Field("val_acc", description="Metric watched.", examples=["val_loss"])
    patience: int = Field(3, ge=1, description="Epochs without improvement before stopping.", examples=[3])
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as improvement.", examples=[0.001])


class TrainSpec(_Spec):
    """The fit loop."""

    epochs: int = Field(10, ge=1, description="Number of epochs.", examples=[10])
    amp: Literal["none", "bf16", "fp16"] = Field("none", description="Mixed precision.", examples=["bf16"])
    grad_clip: float | None = Field(None, gt=0, description="Clip the global gradient norm to this value.", examples=[1.0])
    accumulate: int = Field(1, ge=1, description="Batches per optimizer step.", examples=[4])
    feature_cache: Literal["auto", "off"] = Field(
        "auto", description="auto: cache features of the frozen prefix while it cannot change; off.", examples=["off"])
    checkpoint_every: int = Field(1, ge=1, description="Epochs between training checkpoints.", examples=[1])
    keep_last: int = Field(2, ge=1, description="Training checkpoints kept.", examples=[2])
    early_stopping: EarlyStoppingSpec | None = Field(
        None, description="Stop early on a validation metric.", examples=[{"metric": "val_acc", "patience": 3}])


# --------------------------------------------------------------------------- export & card


class OnnxSpec(_Spec):
    """ONNX export options."""

    opset: int = Field(18, ge=13, le=23, description="ONNX opset version.", examples=[18])
    dynamic_batch: bool = Field(True, description="Leave the batch dimension symbolic.", examples=[True])
    verify: bool = Field(True, description="Compare onnxruntime outputs with torch outputs.", examples=[True])
    atol: float = Field(1e-4, gt=0, description="Largest absolute difference accepted by verification.", examples=[1e-4])


ExportFormat = Literal["safetensors", "torch", "onnx"]


def _default_formats() -> list[ExportFormat]:
    return ["safetensors"]


class ExportSpec(_Spec):
    """What the run writes besides its training checkpoints."""

    formats: list[ExportFormat] = Field(
        default_factory=_default_formats, description="Export formats (model.safetensors, model.pt, model.onnx).",
        examples=[["safetensors", "torch", "onnx"]])
    dtype: Literal["float32", "float16", "bfloat16"] = Field("float32", description="Floating dtype of exported weights.",
                                                             examples=["float16"])
    onnx: OnnxSpec = Field(default_factory=OnnxSpec, description="ONNX options.", examples=[{"opset": 18}])
    shard_size: ByteSize | None = Field(
        None, description="Shard safetensors exports above this size (model.safetensors.index.json).", examples=["2GB"])

    @model_validator(mode="after")
    def _unique(self) -> ExportSpec:
        twice = sorted({f for f in self.formats if self.formats.count(f) > 1})
        if twice:
            raise FieldProblems([(("formats",), f"format listed twice: {', '.join(twice)}")])
        return self


class CardSpec(_Spec):
    """The generated model card."""

    template: str | None = Field(None, description="Jinja2 template (relative path); default: the shipped one.",
                                 examples=["templates/card.md.j2"])
    license: str | None = Field(None, description="License identifier.", examples=["apache-2.0"])
    tags: list[str] = Field(default_factory=list, description="Card tags.", examples=[["image-classification"]])
    intended_use: str | None = Field(None, description="What the model is for.", examples=["Sorting flower photos."])
    limitations: str | None = Field(None, description="Known limitations.", examples=["Trained on 500 images."])


# --------------------------------------------------------------------------- recipe


class Recipe(_Spec):
    """A recipec recipe: what to start from, what to keep, what to train and how."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, title="recipec recipe",
        json_schema_extra={"$id": SCHEMA_ID, "$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    extends: str | None = Field(
        None, description="A recipe this one refines (path relative to this file): deep merge, lists replace.",
        examples=["base.yaml"])
    name: str = Field(pattern=_NAME, description="Run name; output goes to runs/<name>/ unless --out. Default: the file's stem.",
                      examples=["flowers-resnet18"])
    seed: int = Field(0, ge=0, description="Random seed.", examples=[0])
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
        if self.freeze.gradual is not None and self.freeze.gradual.start >= self.train.epochs:
            problems.append((("freeze", "gradual", "start"),
                             f"epoch {self.freeze.gradual.start} never starts "
                             f"(train.epochs is {self.train.epochs}; epochs count from 0)"))
        if problems:
            raise FieldProblems(problems)
        return self
