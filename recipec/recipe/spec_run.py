"""The run-side sections of a recipe: data, the fit loop, exports and the model card.

The model-side sections and the root ``Recipe`` live in :mod:`recipec.recipe.spec`, which
re-exports every name here. This module never imports torch.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator

from recipec.recipe._fields import MAX_BATCH, MAX_EPOCHS, ByteSize, FieldProblems, _check_numbers, _Spec

__all__ = ["CardSpec", "DataSpec", "EarlyStoppingSpec", "ExportFormat", "ExportSpec", "OnnxSpec", "TrainSpec"]


# --------------------------------------------------------------------------- data


def _side(value: object) -> object:
    # a boolean or "1e3" as in any whole-number field; checked here so a wrong value is one error, not one per member
    if value == "from_weights":
        return value
    number = _check_numbers(int, value)
    if isinstance(number, int) and not isinstance(number, bool):
        if not 8 <= number <= 4096:
            raise ValueError(f"must be {'>= 8' if number < 8 else '<= 4096'}, got {number}")
        return number
    raise ValueError(f"must be a whole number or from_weights, got {number if not isinstance(number, str) else repr(number)}")


class DataSpec(_Spec):
    """Dataset, split and preprocessing."""

    dataset: Literal["imagefolder", "digits", "fake", "cifar10", "cifar100", "mnist", "fashionmnist"] = Field(
        "digits", description="imagefolder (root/<class>/<image>), digits (8x8 handwritten digits shipped with "
                              "scikit-learn), fake (random images), or a torchvision dataset already under root.",
        examples=["imagefolder"])
    root: str | None = Field(None, description="Dataset directory (relative to the recipe).", examples=["data/flowers"])
    classes: list[str] | None = Field(None, min_length=1, description="Subset and order of classes.", examples=[["cat", "dog"]])
    per_class: int | None = Field(None, ge=1, le=10**9, description="Few-shot cap on training examples per class "
                                                                    "(null: no cap).", examples=[16])
    val_fraction: float = Field(0.2, ge=0, lt=1, description="Fraction of the data held out for validation.", examples=[0.2])
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
    augment: list[Literal["hflip", "vflip", "random_crop", "random_resized_crop", "color_jitter", "rotate"]] = Field(
        default_factory=list, description="Training augmentations.", examples=[["hflip", "random_resized_crop"]])
    batch_size: int = Field(32, ge=1, le=MAX_BATCH, description="Examples per step; at most 65,536 (the largest "
                                                                "batches in use, with LARS/LAMB).", examples=[64])
    num_workers: int = Field(0, ge=0, le=256, description="DataLoader worker processes; at most 256 (each is a process; "
                                                          "more than the CPU cores only costs memory).", examples=[2])

    on_bad_image: Literal["error", "skip"] = Field(
        "error", description="An image file that cannot be decoded. error: stop, naming the file (recipec plan lists "
                             "them all); skip: leave it out before the split and list it in the run directory "
                             "(skipped_images.txt).", examples=["skip"])

    @model_validator(mode="after")
    def _root(self) -> DataSpec:
        if self.dataset not in ("digits", "fake") and not self.root:
            raise FieldProblems([(("dataset",), f"{self.dataset} needs root: the directory that holds it")])
        return self


# --------------------------------------------------------------------------- train


class EarlyStoppingSpec(_Spec):
    """Stop when a validation metric has not improved for `patience` epochs."""

    metric: Literal["val_acc", "val_loss"] = Field("val_acc", description="Metric watched.", examples=["val_loss"])
    patience: int = Field(3, ge=1, le=MAX_EPOCHS, description="Epochs without improvement before stopping.", examples=[3])
    min_delta: float = Field(0.0, ge=0, le=1e6, description="Smallest change that counts as improvement.",
                             examples=[0.001])


class TrainSpec(_Spec):
    """The fit loop."""

    epochs: int = Field(10, ge=1, le=MAX_EPOCHS, description="Number of epochs; at most 10,000 (the plan has a row "
                                                             "per epoch).", examples=[10])
    amp: Literal["none", "bf16", "fp16"] = Field("none", description="Mixed precision.", examples=["bf16"])
    grad_clip: float | None = Field(None, gt=0, le=1e6, description="Clip the global gradient norm to this value "
                                                                    "(null: no clipping).", examples=[1.0])
    accumulate: int = Field(1, ge=1, le=MAX_BATCH, description="Batches per optimizer step; at most 65,536.",
                            examples=[4])
    # YAML 1.1 reads a bare `off` as false; it means the same here
    feature_cache: Annotated[Literal["auto", "off"], BeforeValidator(lambda v: "off" if v is False else v)] = Field(
        "auto", description="auto: while only the head trains, compute the frozen body once and train the head on its cached "
                            "output, only where that gives the same weights as off (not with augmentations, "
                            "random modules before the head left in training mode, batchnorm: train or --nproc); off.",
        examples=["off"])
    checkpoint_every: int = Field(1, ge=1, le=MAX_EPOCHS, description="Epochs between training checkpoints.", examples=[1])
    keep_last: int = Field(2, ge=1, le=MAX_EPOCHS, description="Training checkpoints kept.", examples=[2])
    early_stopping: EarlyStoppingSpec | None = Field(
        None, description="Stop early on a validation metric.", examples=[{"metric": "val_acc", "patience": 3}])


# --------------------------------------------------------------------------- export & card


class OnnxSpec(_Spec):
    """ONNX export options."""

    opset: int = Field(18, ge=18, le=23, description="ONNX opset version (torch's exporter writes 18 or newer).", examples=[18])
    dynamic_batch: bool = Field(True, description="Leave the batch dimension symbolic.", examples=[True])
    verify: bool = Field(True, description="Compare onnxruntime outputs with torch outputs.", examples=[True])
    atol: float = Field(1e-4, gt=0, le=1, description="Largest absolute difference accepted by verification; at most 1 "
                                                      "(to skip the check, set verify: false).", examples=[1e-4])


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
        None, description="Shard safetensors exports above this size (model.safetensors.index.json); at most "
                                     "1TB.", examples=["2GB"])

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
