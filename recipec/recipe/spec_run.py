"""The run-side sections of a recipe: data, the fit loop, exports and the model card.

The model-side sections and the root ``Recipe`` live in :mod:`recipec.recipe.spec`, which
re-exports every name here. This module never imports torch.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BeforeValidator, Discriminator, Field, Tag, model_validator

from recipec.recipe._fields import MAX_BATCH, MAX_EPOCHS, ByteSize, FieldProblems, check_numbers, BaseSpec
from recipec.recipe.catalog import IN_MEMORY, DatasetName
from recipec.recipe.spec_augment import AugmentItem, MixSpec

__all__ = ["CardSpec", "DataSpec", "EarlyStoppingSpec", "EmaSpec", "ExportFormat", "ExportSpec", "LogSpec", "LossSpec",
           "MlflowSpec", "OnnxSpec", "Pt2Spec", "QuantizeSpec", "SelectSpec",
           "TrainSpec"]


# --------------------------------------------------------------------------- data


def _side(value: object) -> object:
    # a boolean or "1e3" as in any whole-number field; checked here so a wrong value is one error, not one per member
    if value == "from_weights":
        return value
    number = check_numbers(int, value)
    if isinstance(number, int) and not isinstance(number, bool):
        if not 8 <= number <= 4096:
            raise ValueError(f"must be {'>= 8' if number < 8 else '<= 4096'}, got {number}")
        return number
    raise ValueError(f"must be a whole number or from_weights, got {number if not isinstance(number, str) else repr(number)}")


def _workers(value: object) -> object:
    # as _side: one clear error for a boolean, a negative or a huge number
    if value == "auto":
        return value
    number = check_numbers(int, value)
    if isinstance(number, int) and not isinstance(number, bool):
        if not 0 <= number <= 256:
            raise ValueError(f"must be {'>= 0' if number < 0 else '<= 256'}, got {number}")
        return number
    raise ValueError(f"must be a whole number or auto, got {number if not isinstance(number, str) else repr(number)}")


class DataSpec(BaseSpec):
    """Dataset, split and preprocessing."""

    dataset: DatasetName = Field(
        "digits", description="imagefolder (root/<class>/<image>, or split folders root/train/<class>/<image> with "
                              "root/val and root/test), manifest (root is a .csv file with the header "
                              "path,label[,split], or .jsonl; paths relative to it), digits (8x8 handwritten digits "
                              "shipped with scikit-learn), fake (random images), or a torchvision dataset already "
                              "under root.",
        examples=["imagefolder"])
    root: str | None = Field(None, description="Dataset directory, or the manifest file of dataset manifest "
                                                "(relative to the recipe).", examples=["data/flowers", "data/labels.csv"])
    classes: list[str] | None = Field(None, min_length=1, description="Subset and order of classes (default: the "
                                                                      "training data's, sorted).", examples=[["cat", "dog"]])
    per_class: int | None = Field(None, ge=1, le=10**9, description="Few-shot cap on training examples per class "
                                                                    "(null: no cap).", examples=[16])
    val_fraction: float = Field(0.2, ge=0, lt=1, description="Fraction of each training class held out for validation "
                                                             "(random, stratified, seeded), when the data has no val split "
                                                             "(root/val folder, manifest val rows).", examples=[0.2])
    test_split: bool = Field(
        True, description="Make the data's own test split the run's test split: root/test, a manifest's test rows, "
                          "the official test set of cifar10, cifar100, mnist and fashionmnist. Training never reads "
                          "it; recipec eval defaults to it. false: no test split (eval defaults to val).",
        examples=[False])
    image_size: Annotated[Annotated[int, Field(ge=8, le=4096)] | Literal["from_weights"], BeforeValidator(_side)] = Field(
        224, description="Side of the square input images; at most 4096 (one 3x4096x4096 float32 image is 200 MB). "
                         "from_weights: the input size of the pretrained weights (timm pretrained_cfg.input_size, "
                         "torchvision crop_size).", examples=[224, "from_weights"])
    resize: Literal["from_weights", "square"] = Field(
        "from_weights", description="from_weights: with pretrained weights that define their preprocessing (timm "
                                    "pretrained_cfg, torchvision transforms), resize the shorter side to "
                                    "image_size / crop_pct with their interpolation and cut out the centre image_size "
                                    "square (timm's eval transform; Resize(256) + CenterCrop(224) for ImageNet weights), "
                                    "for training (before augment) and validation alike, recorded in the exports; "
                                    "without such weights, as square. square: resize every image to image_size "
                                    "squared, bilinear.", examples=["square"])
    normalize: Literal["from_weights", "imagenet", "none"] = Field(
        "from_weights", description="from_weights: the mean/std of the pretrained weights' transforms; imagenet; none.",
        examples=["imagenet"])
    augment: list[AugmentItem] = Field(
        default_factory=list, max_length=64,
        description="Training augmentations, each a name or {name: ..., options}: hflip, vflip, random_crop, "
                    "random_resized_crop, color_jitter, rotate, randaugment, trivialaugment, augmix, autoaugment "
                    "(torchvision.transforms.v2, on float images in [0, 1]), in the order given, before "
                    "normalisation; random_erasing after normalisation, as timm does. At most 64 items.",
        examples=[["hflip", {"name": "randaugment", "num_ops": 2, "magnitude": 9}, "random_erasing"]])
    mixup: MixSpec | None = Field(
        None, description="MixUp of each training batch (soft targets; validation is never mixed); with cutmix too, "
                          "each batch picks one of the two with probability 0.5 (timm's switch_prob), then mixes "
                          "with that one's prob.", examples=[{"alpha": 0.2, "prob": 1.0}])
    cutmix: MixSpec | None = Field(
        None, description="CutMix of each training batch: a box of another example pasted in, targets mixed by "
                          "area.", examples=[{"alpha": 1.0, "prob": 0.5}])
    sampler: Literal["random", "balanced"] = Field(
        "random", description="random: each epoch a permutation of the training split; balanced: each epoch "
                              "draws as many examples with replacement, each class equally likely (weight 1 / "
                              "its count); both a function of (seed, epoch).", examples=["balanced"])
    batch_size: int = Field(32, ge=1, le=MAX_BATCH, description="Examples per step; at most 65,536 (the largest "
                                                                "batches in use, with LARS/LAMB).", examples=[64])
    num_workers: Annotated[Annotated[int, Field(ge=0, le=256)] | Literal["auto"], BeforeValidator(_workers)] = Field(
        "auto", description="DataLoader worker processes; at most 256 (each is a process; more than the CPU cores only "
                            "costs memory). auto: 0 for data held in memory (digits, fake), else min(8, cores - 1) on "
                            "CUDA and min(4, cores - 1) elsewhere (the cores this process may use); the plan records "
                            "the number.", examples=[2, "auto"])

    on_bad_image: Literal["error", "skip"] = Field(
        "error", description="An image file that cannot be decoded. error: stop, naming the file (recipec plan lists "
                             "them all); skip: leave it out before the split and list it in the run directory "
                             "(skipped_images.txt).", examples=["skip"])

    @model_validator(mode="after")
    def _root(self) -> DataSpec:
        if self.dataset not in IN_MEMORY and not self.root:
            what = "the manifest file" if self.dataset == "manifest" else "the directory that holds it"
            raise FieldProblems([(("dataset",), f"{self.dataset} needs root: {what}")])
        return self


# --------------------------------------------------------------------------- train


class EarlyStoppingSpec(BaseSpec):
    """Stop when a validation metric has not improved for `patience` epochs."""

    metric: Literal["val_acc", "val_loss", "val_map", "val_f1_micro", "val_f1_macro"] = Field(
        "val_acc", description="Metric watched: a loss must fall, the others rise. val_map and val_f1_* are "
                               "task: multilabel's.", examples=["val_loss"])
    patience: int = Field(3, ge=1, le=MAX_EPOCHS, description="Epochs without improvement before stopping.", examples=[3])
    min_delta: float = Field(0.0, ge=0, le=1e6, description="Smallest change that counts as improvement.",
                             examples=[0.001])


SelectMetric = Literal["val_acc", "val_loss", "val_acc_ema", "val_loss_ema",
                       # task: multilabel (recipec.train.multilabel)
                       "val_map", "val_map_ema", "val_f1_micro", "val_f1_micro_ema", "val_f1_macro", "val_f1_macro_ema"]


class SelectSpec(BaseSpec):
    """The validation metric that picks the best epoch (Lightning's ModelCheckpoint(monitor, mode))."""

    metric: SelectMetric = Field("val_acc", description="A validation metric of metrics.jsonl; the _ema ones need "
                                                         "train.ema (the best epoch then keeps its EMA weights). "
                                                         "Default: val_acc; val_map for task: multilabel.",
                                 examples=["val_loss"])
    mode: Literal["max", "min"] | None = Field(
        None, description="max: higher is better; min: lower is better. Default: min for a loss, max otherwise; "
                          "the opposite (the epoch with the highest loss) is refused.", examples=["min"])

    @model_validator(mode="after")
    def _direction(self) -> SelectSpec:
        natural = "min" if "loss" in self.metric else "max"
        if self.mode is not None and self.mode != natural:
            raise FieldProblems([(("mode",), f"{self.mode} would pick the worst epoch of {self.metric}; use "
                                             f"{natural} (or leave mode out)")])
        return self

    @property
    def direction(self) -> str:
        """The mode, resolved: ``min`` for a loss, ``max`` otherwise."""
        return self.mode or ("min" if "loss" in self.metric else "max")


class EmaSpec(BaseSpec):
    """Exponential moving average of the weights (see recipec.train.ema)."""

    decay: float = Field(0.999, gt=0, lt=1, description="ema = decay * ema + (1 - decay) * weights after every "
                                                        "`every` optimizer steps (torch.optim.swa_utils."
                                                        "get_ema_multi_avg_fn); below 1.", examples=[0.999])
    warmup: bool = Field(False, description="Ramp the decay up: the t-th update (from 0) uses min(decay, (1 + t) / "
                                            "(10 + t)), as TensorFlow's ExponentialMovingAverage(num_updates).",
                         examples=[True])
    every: int = Field(1, ge=1, le=MAX_BATCH, description="Optimizer steps between EMA updates; at most 65,536.",
                       examples=[1])


_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def _compile_mode(value: object) -> object:
    # one error for a wrong value, not one per member of the union (and no "yes" read as true)
    if isinstance(value, bool) or value in _COMPILE_MODES:
        return value
    shown = repr(value) if isinstance(value, str) else str(value).lower() if value is None else value
    raise ValueError(f"must be true, false or a mode ({', '.join(_COMPILE_MODES)}), got {shown}")


class TrainSpec(BaseSpec):
    """The fit loop."""

    epochs: int = Field(10, ge=1, le=MAX_EPOCHS, description="Number of epochs; at most 10,000 (the plan has a row "
                                                             "per epoch).", examples=[10])
    amp: Literal["none", "bf16", "fp16"] = Field("none", description="Mixed precision.", examples=["bf16"])
    grad_clip: float | None = Field(None, gt=0, le=1e6, description="Clip the global gradient norm to this value "
                                                                    "(null: no clipping).", examples=[1.0])
    accumulate: int = Field(1, ge=1, le=MAX_BATCH, description="Batches per optimizer step; at most 65,536.",
                            examples=[4])
    feature_cache: Literal["auto", "off"] = Field(
        "auto", description="auto: while only the head trains, compute the frozen body once and train the head on its cached "
                            "output, only where that gives the same weights as off (not with augmentations, "
                            "random modules before the head left in training mode, batchnorm: train or --nproc); off.",
        examples=["off"])
    compile: Annotated[bool | Literal["default", "reduce-overhead", "max-autotune"], BeforeValidator(_compile_mode)] = Field(
        False, description="torch.compile the training forward: true (mode default) or a mode name. Recompiles once per "
                           "phase of the freezing schedule (counted per epoch in metrics.jsonl: compiles); the saved "
                           "weights are the plain module's. Pays off on a GPU for runs of many steps.",
        examples=[True, "max-autotune"])
    channels_last: bool = Field(False, description="Model and input images in channels_last (NHWC) memory: faster "
                                                   "convolutions on recent GPUs, mostly with amp: bf16.", examples=[True])
    checkpoint_every: int = Field(1, ge=1, le=MAX_EPOCHS, description="Epochs between training checkpoints.", examples=[1])
    keep_last: int = Field(2, ge=1, le=MAX_EPOCHS, description="Training checkpoints kept.", examples=[2])
    early_stopping: EarlyStoppingSpec | None = Field(
        None, description="Stop early on a validation metric.", examples=[{"metric": "val_acc", "patience": 3}])
    select: SelectSpec = Field(
        default_factory=lambda: SelectSpec(), description="Which epoch is the best: after each epoch whose metric "
        "improves, its weights go to checkpoints/best.pt; export.weights: best exports them.",
        examples=[{"metric": "val_loss", "mode": "min"}])
    ema: EmaSpec | None = Field(
        None, description="Keep an exponential moving average of the weights, validated every epoch as its own "
                          "metrics (val_loss_ema, val_acc_ema); null: none.", examples=[{"decay": 0.999}])

    @model_validator(mode="after")
    def _ema_metric(self) -> TrainSpec:
        if self.select.metric.endswith("_ema") and self.ema is None:
            raise FieldProblems([(("select", "metric"), f"{self.select.metric} is measured only with train.ema; "
                                                        "set train.ema (e.g. {decay: 0.999}) or select val_acc")])
        return self


# --------------------------------------------------------------------------- loss

ClassWeight = Annotated[float, Field(gt=0, le=1e6), BeforeValidator(lambda v: check_numbers(float, v))]


# `auto` or a mapping, told apart by kind, so a wrong weight is one error (not one more saying it is not auto)
ClassWeights = Annotated[
    Union[Annotated[Literal["auto"], Tag("auto")], Annotated[dict[str, ClassWeight], Tag("mapping")]],  # noqa: UP007
    Discriminator(lambda value: "mapping" if isinstance(value, dict) else "auto"),
]


class FocalSpec(BaseSpec):
    """Focal loss (Lin et al. 2017), softmax form: each class term of the cross-entropy times (1 - p) ** gamma."""

    gamma: float = Field(2.0, ge=0, le=100, description="Focusing parameter; 0 is the cross-entropy; at most 100 "
                                                        "((1 - p) ** 100 is already 0 for any p above 0.5).",
                         examples=[2.0])


class LossSpec(BaseSpec):
    """The training loss: cross-entropy with options. Validation loss (val_loss) stays plain cross-entropy."""

    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Target = (1 - eps) * one-hot + eps / classes "
                                                                "(torch's cross_entropy label_smoothing); below 1.",
                                   examples=[0.1])
    class_weights: ClassWeights | None = Field(
        None, description="auto: w_c = n / (C * n_c) over the training split (n examples, C classes, n_c of class c: "
                          "scikit-learn's 'balanced', so the mean weight per example is 1); or class name -> weight "
                          "(above 0, at most 1e6; classes left out weigh 1); null: all 1. Recorded in plan.json.",
        examples=["auto", {"cat": 2.0}])
    focal: FocalSpec | None = Field(None, description="Focal loss instead of the cross-entropy; null: none.",
                                    examples=[{"gamma": 2.0}])


# --------------------------------------------------------------------------- export & card


class OnnxSpec(BaseSpec):
    """ONNX export options."""

    opset: int = Field(18, ge=18, le=23, description="ONNX opset version (torch's exporter writes 18 or newer).", examples=[18])
    dynamic_batch: bool = Field(True, description="Leave the batch dimension symbolic.", examples=[True])
    verify: bool = Field(True, description="Compare onnxruntime outputs with torch outputs.", examples=[True])
    atol: float = Field(1e-4, gt=0, le=1, description="Largest absolute difference accepted by verification; at most 1 "
                                                      "(to skip the check, set verify: false).", examples=[1e-4])


class Pt2Spec(BaseSpec):
    """torch.export options (export.formats: [pt2])."""

    strict: bool = Field(False, description="Trace with TorchDynamo (strict) instead of Python (non-strict, torch's "
                                            "default): strict refuses more models, with the failing line.",
                         examples=[False])
    dynamic_batch: bool = Field(True, description="Leave the batch dimension symbolic (any batch size runs).",
                                examples=[True])


class QuantizeSpec(BaseSpec):
    """int8 ONNX (model.int8.onnx) written with onnxruntime.quantization from model.onnx."""

    method: Literal["static", "dynamic"] = Field(
        "static", description="static: activations calibrated on training batches through the eval transform "
                              "(QDQ); dynamic: weights int8, activations quantized at run time (needs no data).",
        examples=["static"])
    calibration_batches: int = Field(8, ge=1, le=10_000, description="Training batches (data.batch_size images, "
                                                                     "eval transform) the static method calibrates on.",
                                     examples=[8])
    per_channel: bool = Field(True, description="One scale per output channel of each weight (else per tensor).",
                              examples=[True])


ExportFormat = Literal["safetensors", "torch", "onnx", "pt2", "hub"]


def _default_formats() -> list[ExportFormat]:
    return ["safetensors"]


class ExportSpec(BaseSpec):
    """What the run writes besides its training checkpoints."""

    formats: list[ExportFormat] = Field(
        default_factory=_default_formats, description="Export formats (model.safetensors, model.pt, model.onnx; hub: "
        "RUN/hub/, a folder for the Hugging Face Hub that timm, transformers or torchvision load and `recipec push` "
        "uploads; pt2: model.pt2, torch.export with the recipe inside).",
        examples=[["safetensors", "torch", "onnx"]])
    dtype: Literal["float32", "float16", "bfloat16"] = Field("float32", description="Floating dtype of exported weights.",
                                                             examples=["float16"])
    # "best" was this key's name for "model" before DESIGN.md's contract was followed; it still reads
    weights: Annotated[Literal["model", "last", "ema"], BeforeValidator(lambda v: "model" if v == "best" else v)] = Field(
        "model", description="model: the model weights of the epoch train.select picked, checkpoints/best.pt (its EMA "
                             "weights when the select metric is an _ema one; the last epoch without validation data; "
                             "best is another name for it); last: the final epoch's model; ema: the final EMA weights "
                             "(needs train.ema).", examples=["ema"],
        json_schema_extra={"enum": ["model", "last", "ema", "best"]})  # the schema takes the old name too
    adapters: Literal["merged", "separate", "both"] = Field(
        "merged", description="With adapters: merged: folded into the weights (a plain model in every format); "
                              "separate: PEFT's own files in RUN/adapters/ (adapter_config.json, "
                              "adapter_model.safetensors) beside the merged exports; both: the same as separate.",
        examples=["separate"])
    onnx: OnnxSpec = Field(default_factory=OnnxSpec, description="ONNX options.", examples=[{"opset": 18}])
    pt2: Pt2Spec = Field(default_factory=Pt2Spec, description="torch.export options (model.pt2).",
                         examples=[{"strict": False}])
    quantize: QuantizeSpec | None = Field(
        None, description="int8 ONNX (model.int8.onnx; needs onnx in formats); null: none.",
        examples=[{"method": "static", "calibration_batches": 8}])
    max_accuracy_drop: float | None = Field(
        None, ge=0, le=1, description="An exported artifact whose accuracy (mAP for multilabel) on the selection split "
                                      "is more than this below the model's fails the build (exit 1); null: no limit.",
        examples=[0.01])
    shard_size: ByteSize | None = Field(
        None, description="Shard safetensors exports above this size (model.safetensors.index.json); at most "
                                     "1TB.", examples=["2GB"])

    @model_validator(mode="after")
    def _unique(self) -> ExportSpec:
        twice = sorted({f for f in self.formats if self.formats.count(f) > 1})
        if twice:
            raise FieldProblems([(("formats",), f"format listed twice: {', '.join(twice)}")])
        if self.quantize is not None and "onnx" not in self.formats:
            raise FieldProblems([(("quantize",), "quantizes model.onnx: add onnx to export.formats")])
        return self


class CardSpec(BaseSpec):
    """The generated model card."""

    template: str | None = Field(None, description="Jinja2 template (relative path); default: the shipped one.",
                                 examples=["templates/card.md.j2"])
    license: str | None = Field(None, description="License identifier.", examples=["apache-2.0"])
    tags: list[str] = Field(default_factory=list, description="Card tags.", examples=[["image-classification"]])
    intended_use: str | None = Field(None, description="What the model is for.", examples=["Sorting flower photos."])
    limitations: str | None = Field(None, description="Known limitations.", examples=["Trained on 500 images."])


# --------------------------------------------------------------------------- experiment tracking

# MLflow's stores, by URI scheme: its SQL stores (with an optional driver, postgresql+psycopg2), a tracking server,
# Databricks. Its old file store (a bare path, file://) is refused by MLflow 3 unless told, so it is left out here.
_TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")


def _tracking_uri(value: object) -> object:
    if not isinstance(value, str):
        return value
    scheme = value.partition(":")[0] if ":" in value else ""
    if scheme.split("+")[0].lower() not in _TRACKING_SCHEMES or scheme.startswith("+"):
        raise ValueError(f"{value!r} is not a tracking URI MLflow can store runs in (its scheme must be one of "
                         f"{', '.join(_TRACKING_SCHEMES)}); e.g. sqlite:///mlflow.db, a file beside the runs")
    return value


def _mlflow_schema(schema: dict[str, Any]) -> None:
    schema["anyOf"].insert(1, {"type": "boolean"})  # true and false, as _mlflow_switch reads them


def _mlflow_switch(value: object) -> object:
    # `mlflow: true` is MLflow with every default; `mlflow: false` is none (as tensorboard: false)
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        raise ValueError(f"must be true, false or a mapping (tracking_uri, experiment), got {value!r}")
    return {} if value is True else None if value is False else value


class MlflowSpec(BaseSpec):
    """Where MLflow stores the run (see recipec.tracking)."""

    tracking_uri: Annotated[str | None, BeforeValidator(_tracking_uri)] = Field(
        None, max_length=4096, description="MLflow tracking URI (sqlite:///FILE, postgresql://..., mysql://..., "
                                           "http(s)://SERVER, databricks). Default: sqlite:///mlflow.db in the "
                                           "directory that holds the run directory (beside runs/<name>).",
        examples=["sqlite:///mlflow.db", "http://localhost:5000"])
    experiment: str | None = Field(None, min_length=1, max_length=500,
                                   description="MLflow experiment name (created when missing); default: the recipe's "
                                               "name. At most 500 characters.", examples=["flowers"])


class LogSpec(BaseSpec):
    """Experiment tracking: where each epoch's metrics go besides metrics.jsonl (optional extras)."""

    tensorboard: bool = Field(False, description="Write TensorBoard event files to RUN/tensorboard/: every metric of "
                                                 "metrics.jsonl per epoch (lr/<group> per group), the plan as text "
                                                 "and the hyperparameters. Needs pip install 'recipec[tensorboard]'.",
                              examples=[True])
    mlflow: Annotated[MlflowSpec | None, BeforeValidator(_mlflow_switch)] = Field(
        None, description="Log to MLflow: params (the flattened recipe), metrics per epoch, tags, and the exports, "
                          "card and plan.json as artifacts. true: every default. Needs pip install 'recipec[mlflow]'.",
        examples=[{"tracking_uri": "sqlite:///mlflow.db", "experiment": "flowers"}, True],
        json_schema_extra=_mlflow_schema)
