"""``data.augment`` items, ``data.mixup`` and ``data.cutmix``: training augmentations by name, with options.

An item is a bare name (``randaugment``: torchvision's defaults) or a mapping with ``name``
and that transform's options (``{name: randaugment, num_ops: 2, magnitude: 9}``); each name
has its own model, so an unknown option is a located error naming the allowed ones, and
the JSON Schema describes every option. This module never imports torch.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BeforeValidator, Discriminator, Field, Tag, model_validator

from recipec.recipe._fields import FieldProblems, BaseSpec

__all__ = ["AUGMENT_NAMES", "AugmentItem", "MixSpec"]

AUGMENT_NAMES = ("hflip", "vflip", "random_crop", "random_resized_crop", "color_jitter", "rotate",
                 "randaugment", "trivialaugment", "augmix", "autoaugment", "random_erasing")

_P = Field(0.5, ge=0, le=1, description="Probability of applying it to an example.", examples=[0.5])


def _range(low: float, high: float, what: str, lo: float, hi: float) -> Any:
    return Field((low, high), description=f"{what}: [min, max], each in [{lo:g}, {hi:g}].", examples=[[low, high]])


def _erasing_value(value: Any) -> Any:
    if (isinstance(value, str) and value != "random") or isinstance(value, bool):
        shown = repr(value) if isinstance(value, str) else str(value).lower()
        raise ValueError(f"must be a number or random, got {shown}")
    return value


class _Item(BaseSpec):
    list_options: ClassVar[bool] = True  # an unknown option's error lists the name's options


class _Pair(_Item):
    @model_validator(mode="after")
    def _ordered(self) -> Any:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for name in ("scale", "ratio"):
            pair = getattr(self, name, None)
            if pair is not None and pair[0] > pair[1]:
                problems.append(((name,), f"min must not exceed max, got [{pair[0]:g}, {pair[1]:g}]"))
        if problems:
            raise FieldProblems(problems)
        return self


class HflipSpec(_Item):
    """RandomHorizontalFlip."""

    name: Literal["hflip"] = Field(description="Transform.", examples=["hflip"])
    p: float = _P


class VflipSpec(_Item):
    """RandomVerticalFlip."""

    name: Literal["vflip"] = Field(description="Transform.", examples=["vflip"])
    p: float = _P


class RandomCropSpec(_Item):
    """RandomCrop of image_size after zero padding."""

    name: Literal["random_crop"] = Field(description="Transform.", examples=["random_crop"])
    padding: int | None = Field(None, ge=0, le=4096, description="Pixels of padding on each side (null: image_size / 8, "
                                                                 "4 at 32); at most 4096.", examples=[4])


_Unit = Annotated[float, Field(gt=0, le=1)]
_Ratio = Annotated[float, Field(gt=0, le=100)]


class RandomResizedCropSpec(_Pair):
    """RandomResizedCrop back to image_size (the resize interpolation of the run)."""

    name: Literal["random_resized_crop"] = Field(description="Transform.", examples=["random_resized_crop"])
    scale: tuple[_Unit, _Unit] = _range(0.6, 1.0, "Area of the crop as a fraction of the image", 0, 1)
    ratio: tuple[_Ratio, _Ratio] = _range(3 / 4, 4 / 3, "Aspect ratio of the crop", 0, 100)


class ColorJitterSpec(_Item):
    """ColorJitter (1 or 3 channels; skipped, with a note, for other channel counts)."""

    name: Literal["color_jitter"] = Field(description="Transform.", examples=["color_jitter"])
    brightness: float = Field(0.2, ge=0, le=10, description="Brightness factor drawn from [1 - b, 1 + b]; at most 10.",
                              examples=[0.4])
    contrast: float = Field(0.2, ge=0, le=10, description="Contrast factor drawn from [1 - c, 1 + c]; at most 10.",
                            examples=[0.4])
    saturation: float = Field(0.0, ge=0, le=10, description="Saturation factor drawn from [1 - s, 1 + s]; at most 10.",
                              examples=[0.4])
    hue: float = Field(0.0, ge=0, le=0.5, description="Hue shift drawn from [-h, h]; at most 0.5.", examples=[0.1])


class RotateSpec(_Item):
    """RandomRotation by an angle drawn from [-degrees, degrees] (bilinear)."""

    name: Literal["rotate"] = Field(description="Transform.", examples=["rotate"])
    degrees: float = Field(15, ge=0, le=180, description="Largest rotation in degrees; at most 180.", examples=[15])


_BINS = Field(31, ge=2, le=1000, description="Magnitude bins of the policy; at most 1000.", examples=[31])


class RandAugmentSpec(_Item):
    """RandAugment (Cubuk et al. 2020): num_ops random operations at one magnitude."""

    name: Literal["randaugment"] = Field(description="Transform.", examples=["randaugment"])
    num_ops: int = Field(2, ge=1, le=64, description="Operations applied in sequence; at most 64.", examples=[2])
    magnitude: int = Field(9, ge=0, le=999, description="Magnitude bin, below num_magnitude_bins.", examples=[9])
    num_magnitude_bins: int = _BINS

    @model_validator(mode="after")
    def _bin(self) -> RandAugmentSpec:
        if self.magnitude >= self.num_magnitude_bins:
            raise FieldProblems([(("magnitude",), f"must be below num_magnitude_bins ({self.num_magnitude_bins}), "
                                                  f"got {self.magnitude}")])
        return self


class TrivialAugmentSpec(_Item):
    """TrivialAugmentWide (Müller & Hutter 2021): one random operation at a random magnitude."""

    name: Literal["trivialaugment"] = Field(description="Transform.", examples=["trivialaugment"])
    num_magnitude_bins: int = _BINS


class AugMixSpec(_Item):
    """AugMix (Hendrycks et al. 2020): a Dirichlet mixture of augmentation chains (without the JSD loss)."""

    name: Literal["augmix"] = Field(description="Transform.", examples=["augmix"])
    severity: int = Field(3, ge=1, le=10, description="Severity of the base operations, 1 to 10.", examples=[3])
    mixture_width: int = Field(3, ge=1, le=16, description="Augmentation chains mixed; at most 16.", examples=[3])
    chain_depth: int = Field(-1, ge=-1, le=16, description="Operations per chain; -1: random in [1, 3]; at most 16.",
                             examples=[-1])
    alpha: float = Field(1.0, gt=0, le=100, description="Dirichlet and Beta parameter; at most 100.", examples=[1.0])
    all_ops: bool = Field(True, description="Use every operation (false: leave out those that overlap ImageNet-C "
                                            "corruptions).", examples=[True])


class AutoAugmentSpec(_Item):
    """AutoAugment (Cubuk et al. 2019) with one of its learned policies."""

    name: Literal["autoaugment"] = Field(description="Transform.", examples=["autoaugment"])
    policy: Literal["imagenet", "cifar10", "svhn"] = Field("imagenet", description="Learned policy.",
                                                           examples=["cifar10"])


class RandomErasingSpec(_Pair):
    """RandomErasing (Zhong et al. 2020), always applied after normalisation, as timm does."""

    name: Literal["random_erasing"] = Field(description="Transform.", examples=["random_erasing"])
    p: float = _P
    scale: tuple[_Unit, _Unit] = _range(0.02, 0.33, "Erased area as a fraction of the image", 0, 1)
    ratio: tuple[_Ratio, _Ratio] = _range(0.3, 3.3, "Aspect ratio of the erased area", 0, 100)
    value: Annotated[Annotated[float, Field(ge=-1e3, le=1e3)] | Literal["random"], BeforeValidator(_erasing_value)] = Field(
        0.0, description="Value of the erased pixels after normalisation (0: the mean), or random: per-pixel "
                         "standard normal noise; numbers within +-1000.", examples=[0, "random"])


_MODELS = (HflipSpec, VflipSpec, RandomCropSpec, RandomResizedCropSpec, ColorJitterSpec, RotateSpec,
           RandAugmentSpec, TrivialAugmentSpec, AugMixSpec, AutoAugmentSpec, RandomErasingSpec)
AugmentName = Literal["hflip", "vflip", "random_crop", "random_resized_crop", "color_jitter", "rotate",
                      "randaugment", "trivialaugment", "augmix", "autoaugment", "random_erasing"]


def _tag(value: Any) -> str | None:
    """A bare name is checked against the names; a mapping (or a spec) chooses its model by ``name``."""
    if isinstance(value, str):
        return "bare"
    name = value.get("name") if isinstance(value, dict) else getattr(value, "name", None)
    return name if isinstance(name, str) else None


AugmentItem = Annotated[
    Union[  # noqa: UP007  (the X | Y spelling cannot hold Annotated members)
        Annotated[AugmentName, Tag("bare")],
        Annotated[HflipSpec, Tag("hflip")], Annotated[VflipSpec, Tag("vflip")],
        Annotated[RandomCropSpec, Tag("random_crop")], Annotated[RandomResizedCropSpec, Tag("random_resized_crop")],
        Annotated[ColorJitterSpec, Tag("color_jitter")], Annotated[RotateSpec, Tag("rotate")],
        Annotated[RandAugmentSpec, Tag("randaugment")], Annotated[TrivialAugmentSpec, Tag("trivialaugment")],
        Annotated[AugMixSpec, Tag("augmix")], Annotated[AutoAugmentSpec, Tag("autoaugment")],
        Annotated[RandomErasingSpec, Tag("random_erasing")],
    ],
    Discriminator(_tag),
]


class MixSpec(BaseSpec):
    """MixUp or CutMix of each training batch (torchvision.transforms.v2), with soft targets."""

    alpha: float = Field(1.0, gt=0, le=100, description="Beta(alpha, alpha) parameter of the mixing weight; at most 100 "
                                                        "(0.2 for mixup and 1.0 for cutmix are usual).", examples=[0.2])
    prob: float = Field(1.0, ge=0, le=1, description="Probability that a batch is mixed at all.", examples=[1.0])
